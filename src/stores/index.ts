// breakwater's SQL seam: drivers, URL opening, wrappers for the application's own transactions,
// and per-capability migrations. Driver packages (better-sqlite3, pg) load only when used.

export type { SqlErrorKind } from './errors.js'
export {
  DriverMissingError,
  MigrationConflictError,
  SchemaTooNewError,
  StoreBusyError,
  StoreClosedError,
  StoredDataError,
  sqlErrorKind,
  TransactionMisuseError,
} from './errors.js'
export type { KyselyCompiledQuery, KyselyExecutor } from './kysely.js'
export { fromKysely } from './kysely.js'
export type { AppliedMigration, Migration, RunMigrationsOptions } from './migrations.js'
export { checkSchemaVersion, listAppliedMigrations, runMigrations } from './migrations.js'
export type { DatabaseTarget, OpenDatabaseOptions } from './open.js'
export { openDatabase, parseDatabaseUrl } from './open.js'
export type { PgQueryable, PgTransactionClient, PostgresDriverOptions } from './postgres.js'
export { createPostgresDriver, fromPgClient, notify, PostgresDriver } from './postgres.js'
export { redactUrl } from './redact.js'
export type {
  BetterSqliteDatabase,
  BetterSqliteStatement,
  SqliteDriverOptions,
} from './sqlite.js'
export {
  createSqliteDriver,
  defaultSqliteFilename,
  fromBetterSqlite,
  SqliteDriver,
} from './sqlite.js'
export type {
  SqlDialect,
  SqlDriver,
  SqlExecutor,
  SqlNotification,
  SqlTransaction,
  SqlWrite,
  Unlisten,
  WriteCheck,
} from './types.js'
