import { type LogThreshold, logThresholds, redactSecrets } from '../observability/index.js'
import {
  checkSchemaVersion,
  listAppliedMigrations,
  type Migration,
  parseDatabaseUrl,
  SchemaTooNewError,
  type SqlDriver,
} from '../stores/index.js'
import { sqliteUrlDefect } from '../stores/open.js'
import { postgresUrlDefect, unparsablePostgresUrl } from '../stores/postgres.js'
import { inMemoryRefusal, isInMemoryDatabase, migrateCommandFor } from './existing-database.js'
import { StartupError } from './startup-error.js'
import { addSwitch, maskedUrl, oneLine, UsageError } from './usage.js'

// What the long-running commands (`breakwater relay`, `breakwater saga worker`) share: parsing
// integer flags, reading optional environment variables, failing at start with a message an
// operator can act on. Every command that takes `--db` reads it with `databaseUrl`.

export { StartupError }

/**
 * Parses an integer flag within [min, max]; undefined when the flag was not given. `unit`
 * names what the number counts when the flag's name does not (`--start-timeout`:
 * `milliseconds`), for the message: `--start-timeout must be an integer of milliseconds from 1
 * to ...`. Every command's integer flags are refused in this one form.
 */
export function integerFlag(
  flag: string,
  text: string | undefined,
  min: number,
  max: number,
  unit?: string,
): number | undefined {
  if (text === undefined) return undefined
  if (!/^\d+$/.test(text) || Number(text) < min || Number(text) > max)
    throw new UsageError(
      `${flag} must be an integer ${unit === undefined ? '' : `of ${unit} `}from ${min} to ${max}, got "${redactSecrets(text)}"`,
    )
  return Number(text)
}

/** A setting's value and where it came from (the flag, or the environment variable). */
export interface Setting {
  readonly value: string
  /** What a message about the value names: `--broker`, or `BREAKWATER_BROKER_URL`. */
  readonly source: string
}

/**
 * `flag`'s value, else the environment variable `variable` (when set and not empty), else
 * `fallback`; with the name a message about the value should give.
 */
export function flagOrEnv(
  values: ReadonlyMap<string, string>,
  flag: string,
  env: Readonly<Record<string, string | undefined>>,
  variable: string,
  fallback: string,
): Setting {
  const given = values.get(flag)
  if (given !== undefined) return { value: given, source: flag }
  const fromEnv = env[variable]
  return fromEnv === undefined || fromEnv === ''
    ? { value: fallback, source: flag }
    : { value: fromEnv, source: variable }
}

/**
 * The database URLs every CLI command accepts, for its messages. Not the library's list
 * (src/stores/open.ts), which offers `sqlite::memory:`: every command refuses that one.
 */
// Placeholders in angle brackets, as `<file>`: commands mask secrets in a whole message once
// more before printing it, and `user:pass@` would come out as `user:***@`, a form that reads
// as if a password had been hidden in it.
export const acceptedDatabaseUrls = 'sqlite:<file> or postgres://<user>:<password>@<host>/<db>'

/** The help section of the admin commands (migrate, outbox, saga) on `BREAKWATER_DB_URL`. */
export const databaseUrlEnvironmentHelp = `environment:
  BREAKWATER_DB_URL  used when --db is not given: arguments show in ps and shell history,
                     so a URL with a password belongs here
`

/**
 * `--db`, else `BREAKWATER_DB_URL`, else `fallback`; a URL that is not a database's, or names
 * an in-memory one (empty, and gone when the command ends), is refused with a `UsageError`
 * naming where it came from and never showing its password. `inMemory` says why an in-memory
 * database is refused (after `--db: `).
 */
export function databaseUrl(
  values: ReadonlyMap<string, string>,
  env: Readonly<Record<string, string | undefined>>,
  fallback: string,
  inMemory: string = inMemoryRefusal,
): string {
  const { value, source } = flagOrEnv(values, '--db', env, 'BREAKWATER_DB_URL', fallback)
  checkDatabaseUrl(value, source)
  if (isInMemoryDatabase(value)) throw new UsageError(`${source}: ${inMemory}`)
  return value
}

/**
 * Throws a `UsageError` naming `source` (`--db`, `BREAKWATER_DB_URL`, `--broker`) unless `value`
 * is a database URL; the message never shows its password.
 */
export function checkDatabaseUrl(value: string, source: string): void {
  try {
    parseDatabaseUrl(value)
  } catch {
    // A postgres:// URL that does not parse (a bad port, an unencoded `[`) is told as such:
    // the list of forms would not say what is wrong with it; so is one with a query parameter
    // pg would ignore. So is a sqlite: URL whose file part does not decode (`100%.db`, a
    // pasted `\r`).
    const wanted = /^postgres(ql)?:\/\/./i.test(value)
      ? postgresWanted(value)
      : (sqliteUrlDefect(value) ?? acceptedDatabaseUrls)
    // Escaped here, not only where it is printed: every command quotes this message, the relay
    // too, and a pasted line ending is the very fault the sqlite: message asks about.
    throw new UsageError(`${source}: expected ${wanted}, got "${oneLine(value)}"`)
  }
}

function postgresWanted(url: string): string {
  const defect = postgresUrlDefect(url)
  return defect === undefined || defect === unparsablePostgresUrl
    ? `${unparsablePostgresUrl} (postgres://<user>:<password>@<host>:<port>/<db>)`
    : defect
}

/**
 * Throws a StartupError naming the migrations of `capability` that `db` lacks, or saying that a
 * newer breakwater migrated it (`SCHEMA_TOO_NEW`: this code must not run on that schema); `env`
 * is where the hint looks for `BREAKWATER_DB_URL` (see {@link migrateCommandFor}).
 */
export async function checkMigrated(
  db: SqlDriver,
  capability: string,
  migrations: readonly Migration[],
  url: string,
  env: Readonly<Record<string, string | undefined>> = {},
): Promise<void> {
  try {
    await checkSchemaVersion(db, capability, migrations)
  } catch (error) {
    if (!(error instanceof SchemaTooNewError)) throw error
    throw new StartupError(`${maskedUrl(url)}: ${tooNewLine(error)}`, { cause: error })
  }
  const applied = new Set(
    (await listAppliedMigrations(db))
      .filter((m) => m.capability === capability)
      .map((m) => m.version),
  )
  const missing = migrations.filter((m) => !applied.has(m.version))
  if (missing.length > 0)
    throw new StartupError(
      `${maskedUrl(url)} lacks the ${capability} migrations (${missing.map((m) => m.version).join(', ')}): run ${migrateCommandFor(url, env)} first`,
    )
}

// The code too, so that a deploy script can look for it in the output.
export function tooNewLine(error: SchemaTooNewError): string {
  return `${error.message} (${error.code})`
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
      addSwitch(flags, flag, eq)
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

/**
 * Parses `--metrics-port` (no server when absent) and `--metrics-host` (default 127.0.0.1). A
 * host without a port is refused: no server would start, and the address be ignored silently.
 */
export function metricsFlags(values: ReadonlyMap<string, string>): {
  readonly port: number | undefined
  readonly host: string
} {
  const port = integerFlag('--metrics-port', values.get('--metrics-port'), 0, 65_535)
  const host = values.get('--metrics-host')
  if (host !== undefined && port === undefined)
    throw new UsageError('--metrics-host applies only with --metrics-port')
  return { port, host: host ?? '127.0.0.1' }
}

/** Parses `--log-level` (default info). */
export function logLevelFlag(text: string | undefined): LogThreshold {
  const level = text ?? 'info'
  if (!(logThresholds as readonly string[]).includes(level))
    throw new UsageError(`--log-level must be one of ${logThresholds.join(', ')}, got "${level}"`)
  return level as LogThreshold
}
