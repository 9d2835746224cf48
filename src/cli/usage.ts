// What every CLI command shares for reporting: the error a parser throws for bad arguments,
// and the text of anything thrown.

/** Thrown by a command's parser for bad arguments: reported with the usage, exit code 2. */
export class UsageError extends Error {}

/** An error's message, or the thrown value as text. */
export function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error)
}
