"""Generation jobs from admission to result: admission (limits, credit holds), the fair
queue, rate limits, the worker and its render process, results and failures."""
