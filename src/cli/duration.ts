import { UsageError } from './usage.js'

const units = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 } as const

/**
 * Reads a command-line duration (`30d`, `12h`, `90m`, `45s`, `500ms`) as milliseconds. The
 * unit is required: a bare number would leave the reader guessing whether it means seconds or
 * milliseconds. Throws a `UsageError` naming `flag`.
 */
export function parseDuration(flag: string, text: string): number {
  const match = /^(\d+)(ms|s|m|h|d)$/.exec(text)
  if (match !== null && match[1]!.length > 12)
    throw new UsageError(`${flag} is too long (at most 12 digits before the unit), got "${text}"`)
  if (match === null) {
    throw new UsageError(
      `${flag} must be a whole number with a unit (ms, s, m, h or d), such as 30d or 12h, got "${text}"`,
    )
  }
  const ms = Number(match[1]) * units[match[2] as keyof typeof units]
  if (ms > Number.MAX_SAFE_INTEGER)
    throw new UsageError(
      `${flag} is too long (more than ${Number.MAX_SAFE_INTEGER} ms), got "${text}"`,
    )
  return ms
}
