// Writing a log line must never break the code that logs: logging often happens in an error
// path (a catch, a close handler, a timer), where a throw from a closed stream (EPIPE), a full
// disk or a faulty custom output would replace the real error, skip the rest of the handler,
// or, from a timer, crash the process. A line whose write throws is dropped.

import { redactSecrets } from './redact.js'

// Outputs already reported: each failing output is reported once, not once per line, so a
// broken output cannot flood stderr (a busy proxy logs a line per request).
const reported = new WeakSet<object>()

/**
 * Writes `text` to `output`, and swallows what `write` throws. The first failure of each
 * output is reported once to `process.stderr` (secrets masked); later lines are dropped
 * silently. Internal.
 */
export function writeSafely(output: { write(text: string): unknown }, text: string): void {
  try {
    output.write(text)
  } catch (error) {
    if (reported.has(output)) return
    reported.add(output)
    try {
      process.stderr.write(
        `breakwater: a log output's write() threw (${redactSecrets(describe(error))}); ` +
          'this line and every later line it fails to write are dropped\n',
      )
    } catch {
      // stderr itself is gone (or is the failing output): nowhere is left to say so.
    }
  }
}

function describe(error: unknown): string {
  try {
    return error instanceof Error ? `${error.name}: ${error.message}` : String(error)
  } catch {
    return 'an unprintable value'
  }
}
