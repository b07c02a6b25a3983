// Every page: who is signed in, the operator link for administrators, sign out.
import { api, ApiError, signOut, token } from "./api.js";

export const account = (async () => {
  try {
    const me = await api("/account");
    document.getElementById("who").textContent = me.open_mode ? "Open mode" : me.user;
    document.getElementById("operator-link").hidden = !me.admin;
    const out = document.getElementById("sign-out");
    out.hidden = me.open_mode || !token();
    out.addEventListener("click", () => { signOut(); location.assign("/ui/signin"); });
    return me;
  } catch (error) {
    if (error instanceof ApiError && error.status === 401 && document.body.dataset.page !== "signin") {
      location.assign("/ui/signin");
    }
    throw error;
  }
})();
