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

/**
 * The shortest window a prune takes for records that are a dedupe window (the inbox's records,
 * finished saga instances whose ids catch a duplicate start) without its `--allow-short-...`
 * flag. `--older-than 0d` removed them all, so a redelivery of a moment later (a consumer's
 * crash before its ack, a broker's ack timeout: RabbitMQ's consumer_timeout is 30 minutes by
 * default) was applied again. An hour is above those.
 */
const minDedupeWindowMs = 3_600_000

/** What {@link dedupeWindow} reads and how its refusal is worded. */
export interface DedupeWindowFlag {
  /** The window's flag: `--inbox-older-than`. */
  readonly flag: string
  /** Its value as given, undefined when the flag was not given. */
  readonly text: string | undefined
  /** The window taken when the flag is not given: `7d`. */
  readonly fallback: string
  /** The flag that takes a window under 1h: `--allow-short-inbox-window`. */
  readonly allowFlag: string
  /** Whether `allowFlag` was given. */
  readonly allowed: boolean
  /** What goes wrong with a short window, for the message. */
  readonly risk: string
  /** What the window must outlast: `any redelivery can take`. */
  readonly outlast: string
}

/**
 * Reads a prune's window over records that catch duplicates, in milliseconds: a window under
 * 1h is refused (a {@link UsageError} saying why and naming `allowFlag`) unless `allowFlag` was
 * given, and `allowFlag` is refused without the window's flag.
 */
export function dedupeWindow(window: DedupeWindowFlag): number {
  const { flag, text, fallback, allowFlag, allowed } = window
  const ms = parseDuration(flag, text ?? fallback)
  if (allowed && text === undefined) throw new UsageError(`${allowFlag} applies only with ${flag}`)
  if (ms < minDedupeWindowMs && !allowed)
    throw new UsageError(
      `${flag} ${text} is shorter than 1h: ${window.risk}. Give a window longer than ${window.outlast} (default ${fallback}), or add ${allowFlag} if removing them is meant`,
    )
  return ms
}
