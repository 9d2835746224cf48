// Waiting on real time for something a real server or socket does (never for backoff or
// cooldowns, which tests drive on an injected clock).

/** Polls `check` every `everyMs` until it returns true; fails, naming `what`, after `timeoutMs`. */
export async function until(
  check: () => boolean | Promise<boolean>,
  what: string,
  timeoutMs = 20_000,
  everyMs = 5,
): Promise<void> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    if (await check()) return
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, everyMs))
  }
}
