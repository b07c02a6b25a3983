import { api, notice, signIn, signOut } from "./api.js";

document.getElementById("signin-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  signIn(document.getElementById("token").value);
  try {
    await api("/account");
    location.assign("/ui/generate");
  } catch {
    signOut();
    notice("That token was not accepted.");
  }
});

// In open mode there is nobody to sign in as.
api("/account").then((me) => { if (me.open_mode) location.assign("/ui/generate"); }).catch(() => {});
