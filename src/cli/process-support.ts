import { type LogThreshold, logThresholds, redactSecrets } from '../observability/index.js'
import { listAppliedMigrations, type Migration, type SqlDriver } from '../stores/index.js'
import { UsageError } from './usage.js'

// What the long-running commands (`breakwater relay`, `breakwater saga worker`) share: parsing
// integer flags, reading optional environment variables, failing at start with a message an
// operator can act on.

/** A failure while a process starts (exit 1, the message printed as is). */
export class StartupError extends Error {}

/** Parses an integer flag within [min, max]; undefined when the flag was not given. */
export function integerFlag(
  flag: string,
  text: string | undefined,
  min: number,
  max: number,
): number | undefined {
  if (text === undefined) return undefined
  if (!/^\d+$/.test(text) || Number(text) < min || Number(text) > max)
    throw new UsageError(
      `${flag} must be an integer from ${min} to ${max}, got "${redactSecrets(text)}"`,
    )
  return Number(text)
}

/** An environment variable's value, or undefined when it is unset or empty. */
export function nonEmpty(value: string | undefined): string | undefined {
  return value === undefined || value === '' ? undefined : value
}

/** Throws a StartupError naming the migrations of `capability` that `db` lacks. */
export async function checkMigrated(
  db: SqlDriver,
  capability: string,
  migrations: readonly Migration[],
  url: string,
): Promise<void> {
  const applied = new Set(
    (await listAppliedMigrations(db))
      .filter((m) => m.capability === capability)
      .map((m) => m.version),
  )
  const missing = migrations.filter((m) => !applied.has(m.version))
  if (missing.length > 0)
    throw new StartupError(
      `${redactSecrets(url)} lacks the ${capability} migrations (${missing.map((m) => m.version).join(', ')}): run \`breakwater migrate --db ${redactSecrets(url)}\` first`,
    )
}

/** A long-running command's flags: values by flag, and the boolean flags given. */
export interface ReadFlags {
  readonly values: ReadonlyMap<string, string>
  readonly flags: ReadonlySet<string>
}

/**
 * Reads `--flag value`, `--flag=value` and boolean `--flag` arguments, refusing positional
 * arguments, unknown flags, missing values and repeated flags with a `UsageError`. `refuse`
 * may throw for a flag before it is looked up (a secret given as an argument).
 */
export function readFlags(
  args: readonly string[],
  valueFlags: ReadonlySet<string>,
  booleanFlags: ReadonlySet<string> = new Set(),
  refuse?: (flag: string) => void,
): ReadFlags {
  const values = new Map<string, string>()
  const flags = new Set<string>()
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!
    if (!arg.startsWith('--')) throw new UsageError(`unexpected argument "${redactSecrets(arg)}"`)
    const eq = arg.indexOf('=')
    const flag = eq < 0 ? arg : arg.slice(0, eq)
    refuse?.(flag)
    if (booleanFlags.has(flag)) {
      if (eq >= 0) throw new UsageError(`${flag} takes no value`)
      flags.add(flag)
      continue
    }
    if (!valueFlags.has(flag)) throw new UsageError(`unknown option "${redactSecrets(flag)}"`)
    const value = eq >= 0 ? arg.slice(eq + 1) : args[++i]
    if (value === undefined || value === '' || (eq < 0 && value.startsWith('--')))
      throw new UsageError(`${flag} needs a value`)
    if (values.has(flag)) throw new UsageError(`${flag} given twice`)
    values.set(flag, value)
  }
  return { values, flags }
}

/** Parses `--log-level` (default info). */
export function logLevelFlag(text: string | undefined): LogThreshold {
  const level = text ?? 'info'
  if (!(logThresholds as readonly string[]).includes(level))
    throw new UsageError(`--log-level must be one of ${logThresholds.join(', ')}, got "${level}"`)
  return level as LogThreshold
}
