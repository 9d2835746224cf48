import type { Clock } from '../core/clock.js'
import { InvalidOptionError } from '../core/errors.js'
import { checkClock, checkObject, checkOptionKeys, optionKeys } from '../core/validate.js'
import { checkSqlDriver, checkSqlExecutor } from './check-driver.js'
import { MigrationConflictError, SchemaTooNewError } from './errors.js'
import type { SqlDriver, SqlExecutor } from './types.js'

/**
 * One numbered schema change of a capability, in both dialects. Each array holds single
 * statements, run in order inside the migration transaction (SQLite prepares one statement at
 * a time). Never edit a migration once released: add the next version.
 */
export interface Migration {
  /**
   * Position in the capability's history: an integer from 1 to 2147483647 (PostgreSQL's
   * INTEGER, so no timestamp), unique and increasing.
   */
  readonly version: number
  /** A short kebab-case name, recorded with the version and checked on every run. */
  readonly name: string
  /** Statements for SQLite. */
  readonly sqlite: readonly string[]
  /** Statements for PostgreSQL. */
  readonly postgres: readonly string[]
}

/** A migration recorded in `breakwater_migrations`. */
export interface AppliedMigration {
  /** The capability it belongs to, e.g. `idempotency`. */
  readonly capability: string
  /** Its version. */
  readonly version: number
  /** Its name. */
  readonly name: string
  /** When it was applied, in epoch milliseconds. */
  readonly appliedAt: number
}

/** Options of {@link runMigrations}. */
export interface RunMigrationsOptions {
  /**
   * Source of `applied_at`.
   * @default systemClock
   */
  readonly clock?: Clock | undefined
}

/** The keys RunMigrationsOptions takes (internal: not exported from the package root). */
export const runMigrationsOptions = optionKeys<RunMigrationsOptions>({ clock: true })

const createTable = {
  sqlite: `CREATE TABLE IF NOT EXISTS breakwater_migrations (
  capability TEXT NOT NULL,
  version INTEGER NOT NULL,
  name TEXT NOT NULL,
  applied_at INTEGER NOT NULL,
  PRIMARY KEY (capability, version)
)`,
  postgres: `CREATE TABLE IF NOT EXISTS breakwater_migrations (
  capability TEXT NOT NULL,
  version INTEGER NOT NULL,
  name TEXT NOT NULL,
  applied_at BIGINT NOT NULL,
  PRIMARY KEY (capability, version)
)`,
} as const

// One key for every migration run in the database ("breakwat" in ASCII): runs for different
// capabilities also serialize, which keeps the shared table's creation race-free too.
const advisoryLockKey = '7121410496880042356'

/**
 * Applies a capability's pending migrations, in version order, in one transaction, and returns
 * the ones it applied (empty when the database was up to date). Safe to call from several
 * processes at once: each migration is applied exactly once.
 *
 * - PostgreSQL: the transaction first takes `pg_advisory_xact_lock`. `CREATE TABLE IF NOT
 *   EXISTS` and "read applied versions, then apply the rest" both race between concurrent
 *   sessions (the former can even fail on a catalog unique index); the lock makes concurrent
 *   runners take turns, and being transaction-scoped it is released by COMMIT or ROLLBACK, even
 *   when the process dies.
 * - SQLite: the transaction is `BEGIN IMMEDIATE`, which already holds the database's single
 *   write lock from the start; other processes wait up to their busy timeout.
 *
 * A recorded migration whose name differs from the code's throws `MigrationConflictError`.
 * A recorded version above the highest in `migrations` (a newer breakwater migrated the
 * capability) throws `SchemaTooNewError`, before anything is applied: the older code must not
 * run against a schema it was not written for. The check reads the versions inside the same
 * locked transaction that applies, so a newer process committing meanwhile is seen, and the
 * versions this run applies itself are never taken for newer ones. An unknown (misspelt) option
 * is refused with `InvalidOptionError` (`INVALID_OPTION`) naming it.
 *
 * @example
 * ```ts
 * const applied = await runMigrations(db, 'orders', [
 *   { version: 1, name: 'create-orders',
 *     sqlite: ['CREATE TABLE orders (id TEXT PRIMARY KEY)'],
 *     postgres: ['CREATE TABLE orders (id TEXT PRIMARY KEY)'] },
 * ])
 * ```
 */
export async function runMigrations(
  db: SqlDriver,
  capability: string,
  migrations: readonly Migration[],
  options: RunMigrationsOptions = {},
): Promise<AppliedMigration[]> {
  checkSqlDriver('db', db, 'a SqlDriver (openDatabase)')
  if (typeof capability !== 'string' || !/^[a-z][a-z0-9-]*$/.test(capability)) {
    throw new InvalidOptionError('capability', 'a kebab-case name', capability)
  }
  const ordered = checkMigrations(capability, migrations)
  checkObject('options', options)
  // A misspelt clock was dropped without a word: applied_at came from the system clock.
  checkOptionKeys('options', options, runMigrationsOptions, { bareNames: true })
  const clock = checkClock('clock', options.clock)
  return db.transaction(async (tx) => {
    if (tx.dialect === 'postgres') {
      await tx.query(`SELECT pg_advisory_xact_lock(${advisoryLockKey})`)
    }
    await tx.execute(createTable[tx.dialect])
    const applied = await appliedVersions(tx, capability)
    // Checked before the first statement runs: a refused run changes nothing (the table
    // creation above is a no-op, as a newer release made it).
    refuseNewer(capability, applied.keys(), ordered)
    const done: AppliedMigration[] = []
    for (const migration of ordered) {
      const recorded = applied.get(migration.version)
      if (recorded !== undefined) {
        if (recorded !== migration.name) {
          throw new MigrationConflictError(capability, migration.version, recorded, migration.name)
        }
        continue
      }
      for (const statement of migration[tx.dialect]) await tx.execute(statement)
      const appliedAt = clock.now()
      await tx.execute(
        'INSERT INTO breakwater_migrations (capability, version, name, applied_at) VALUES ($1, $2, $3, $4)',
        [capability, migration.version, migration.name, appliedAt],
      )
      done.push({ capability, version: migration.version, name: migration.name, appliedAt })
    }
    return done
  })
}

async function appliedVersions(tx: SqlExecutor, capability: string): Promise<Map<number, string>> {
  const rows = await tx.query<{ version: number; name: string }>(
    'SELECT version, name FROM breakwater_migrations WHERE capability = $1',
    [capability],
  )
  return new Map(rows.map((row) => [Number(row.version), row.name]))
}

/**
 * Throws `SchemaTooNewError` when the database records a version of `capability` above the
 * highest in `migrations` (a newer breakwater migrated it); resolves otherwise, also when
 * migrations are pending or never ran. Read-only: for a process that uses a capability someone
 * else migrates (`breakwater migrate`), to refuse to start on a schema newer than its code.
 * {@link runMigrations} makes the same check itself.
 *
 * @example
 * ```ts
 * await checkSchemaVersion(db, 'outbox', outboxMigrations)
 * ```
 */
export async function checkSchemaVersion(
  db: SqlExecutor,
  capability: string,
  migrations: readonly Migration[],
): Promise<void> {
  checkSqlExecutor('db', db)
  const ordered = checkMigrations(capability, migrations)
  const recorded = (await listAppliedMigrations(db))
    .filter((m) => m.capability === capability)
    .map((m) => m.version)
  refuseNewer(capability, recorded, ordered)
}

// Only a version above the code's highest is "newer". An unknown version below it cannot come
// from a release (a release only appends migrations), so it is left alone as before.
function refuseNewer(
  capability: string,
  recorded: Iterable<number>,
  ordered: readonly Migration[],
): void {
  const known = ordered.at(-1)?.version ?? 0
  const highest = Math.max(0, ...recorded)
  if (highest > known) throw new SchemaTooNewError(capability, highest, known)
}

/**
 * Lists every migration recorded in the database (all capabilities), oldest version first; empty
 * when migrations never ran. On PostgreSQL "the database" is the `breakwater_migrations` table
 * the connection's `search_path` finds, as for {@link runMigrations}.
 */
export async function listAppliedMigrations(db: SqlExecutor): Promise<AppliedMigration[]> {
  checkSqlExecutor('db', db)
  // PostgreSQL: the table as the SELECT below resolves it, through the search_path; a
  // breakwater_migrations in another schema (another tenant's, another app's) is not this one's.
  const exists =
    db.dialect === 'postgres'
      ? await db.query("SELECT 1 WHERE to_regclass('breakwater_migrations') IS NOT NULL")
      : await db.query(
          "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'breakwater_migrations'",
        )
  if (exists.length === 0) return []
  const rows = await db.query<{
    capability: string
    version: number
    name: string
    applied_at: number
  }>(
    'SELECT capability, version, name, applied_at FROM breakwater_migrations ORDER BY capability, version',
  )
  return rows.map((row) => ({
    capability: row.capability,
    version: Number(row.version),
    name: row.name,
    appliedAt: Number(row.applied_at),
  }))
}

/** The largest `breakwater_migrations.version` PostgreSQL's INTEGER holds. */
const maxVersion = 2147483647

function checkMigrations(capability: string, migrations: readonly Migration[]): Migration[] {
  if (!Array.isArray(migrations)) {
    throw new InvalidOptionError(`migrations.${capability}`, 'an array of migrations', migrations)
  }
  const seen = new Set<number>()
  migrations.forEach((migration: Migration, index) => {
    const at = `migrations.${capability}[${index}]`
    if (typeof migration !== 'object' || migration === null) {
      throw new InvalidOptionError(at, 'a migration object', migration)
    }
    // breakwater_migrations.version is an INTEGER (32-bit on PostgreSQL): a timestamp as version
    // would fail there only once the migration had run, and SQLite would take it.
    if (
      !Number.isInteger(migration.version) ||
      migration.version < 1 ||
      migration.version > maxVersion
    ) {
      throw new InvalidOptionError(
        `${at}.version`,
        `an integer from 1 to ${maxVersion} (not a timestamp: number migrations 1, 2, 3...)`,
        migration.version,
      )
    }
    if (seen.has(migration.version)) {
      throw new InvalidOptionError(`${at}.version`, 'a version used once', migration.version)
    }
    seen.add(migration.version)
    if (typeof migration.name !== 'string' || migration.name === '') {
      throw new InvalidOptionError(`${at}.name`, 'a non-empty string', migration.name)
    }
    for (const dialect of ['sqlite', 'postgres'] as const) {
      const statements = migration[dialect]
      if (!Array.isArray(statements) || statements.some((s) => typeof s !== 'string')) {
        throw new InvalidOptionError(`${at}.${dialect}`, 'an array of SQL strings', statements)
      }
    }
  })
  return [...migrations].sort((a, b) => a.version - b.version)
}
