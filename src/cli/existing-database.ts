// Opening the database of a command that works on breakwater's tables (every command but
// `migrate`). Such a command must never create or change a file it was not meant for: opening
// a SQLite file through the driver creates it (and its folder) when missing, and switches an
// existing file to WAL mode for good. So a `sqlite:` URL is checked first, read-only: the file
// must exist and hold breakwater's migrations table. A mistyped path then creates nothing, and
// another program's database is left byte for byte as it was.

import { accessSync, existsSync, constants as fsConstants, statSync } from 'node:fs'
import { basename, dirname, resolve } from 'node:path'
import { BreakwaterError, InvalidOptionError } from '../core/errors.js'
import { redactSecrets } from '../observability/index.js'
import { openDatabase, parseDatabaseUrl, type SqlDriver } from '../stores/index.js'
import { loadBetterSqlite, namesFolder } from '../stores/sqlite.js'
import { folderChain, visibleStatOf } from '../stores/sqlite-path.js'
import { messageOf } from './usage.js'

/** The table `breakwater migrate` creates first (src/stores/migrations.ts). */
const migrationsTable = 'breakwater_migrations'

interface ReadOnlyDatabase {
  prepare(sql: string): { get(...params: unknown[]): unknown }
  close(): void
}

/** Why an in-memory database is refused: what a message about one says after the flag. */
export const inMemoryRefusal =
  'an in-memory database is empty and lasts one command: use a sqlite: file'

/** Whether `url` (already valid) names a private in-memory SQLite database. */
export function isInMemoryDatabase(url: string): boolean {
  const target = parseDatabaseUrl(url)
  return target.dialect === 'sqlite' && target.filename === ':memory:'
}

/**
 * The command a hint gives to migrate the database at `url`: `breakwater migrate` alone when
 * `url` is `BREAKWATER_DB_URL`'s (migrate reads it too; the URL with its password hidden would
 * be a command that does not work, and putting the password back in argv is what the variable
 * avoids), else `breakwater migrate --db <url>` with its password hidden.
 */
export function migrateCommandFor(
  url: string,
  env: Readonly<Record<string, string | undefined>>,
): string {
  return url === env.BREAKWATER_DB_URL
    ? '`breakwater migrate`'
    : `\`breakwater migrate --db ${redactSecrets(url)}\``
}

/**
 * Where the database URL `url` came from, for a message about it: `BREAKWATER_DB_URL` when `url`
 * is that variable's value (as {@link migrateCommandFor} tells), else `--db`.
 */
export function databaseUrlSource(
  url: string,
  env: Readonly<Record<string, string | undefined>>,
): string {
  return url === env.BREAKWATER_DB_URL ? 'BREAKWATER_DB_URL' : '--db'
}

/**
 * The line to print, after the command's name, for an error thrown while opening the database
 * that `source` (`--db`, `--broker`) names, when that error is `INVALID_OPTION`: the URL is a
 * bad argument (a folder given as the SQLite file), exit 2 as for any other. Undefined for any
 * other error, a failure to report as such (exit 1). The message never shows a password.
 */
export function badDatabaseArgument(error: unknown, source: string): string | undefined {
  return BreakwaterError.is(error) && error.code === 'INVALID_OPTION'
    ? `${source}: ${redactSecrets(error.message)}`
    : undefined
}

/**
 * For `breakwater migrate`, which creates a missing SQLite file: when opening `url` failed with
 * SQLite's bare "unable to open database file" (`SQLITE_CANTOPEN`) and the file does not exist
 * in a folder that does, that folder takes no new file (a read-only place such as /proc, a
 * read-only mount, no permission). Returns the INVALID_OPTION that names the folder, a bad
 * argument as the driver's refusal of a folder it cannot create is; undefined otherwise.
 */
export function uncreatableFileRefusal(
  url: string,
  error: unknown,
): InvalidOptionError | undefined {
  if ((error as { code?: unknown } | null)?.code !== 'SQLITE_CANTOPEN') return undefined
  const target = parseDatabaseUrl(url)
  if (target.dialect !== 'sqlite' || target.filename === ':memory:') return undefined
  const file = resolve(target.filename)
  if (visibleStatOf(file) !== undefined || !visibleStatOf(dirname(file))?.isDirectory())
    return undefined
  return new InvalidOptionError(
    'filename',
    `a file the folder ${dirname(file)} can hold (it refused a new ${basename(file)}: ${messageOf(error)})`,
    target.filename,
  )
}

/**
 * Opens the database at `url` for a command that needs breakwater's tables. Throws, naming the
 * file and what to do, when a SQLite file is missing, is not a SQLite database, or has no
 * breakwater migrations. Refused with INVALID_OPTION, a bad argument: `sqlite::memory:` (it
 * would be empty, and gone when the command ends), and a path that cannot be a database file (a
 * folder, or a file where a folder of the path goes), as the SQLite driver refuses it for
 * `breakwater migrate`. PostgreSQL URLs open as they are (nothing is
 * created by connecting). `env` is where the hint to migrate looks for `BREAKWATER_DB_URL` (see
 * {@link migrateCommandFor}). Given `writer` (`the relay`), a SQLite file this user may not write
 * is refused too, naming it.
 *
 * @example
 * ```ts
 * const db = await openExistingDatabase('sqlite:./.breakwater/app.db')
 * ```
 */
export async function openExistingDatabase(
  url: string,
  env: Readonly<Record<string, string | undefined>> = {},
  options: { readonly writer?: string; readonly signal?: AbortSignal } = {},
): Promise<SqlDriver> {
  const target = parseDatabaseUrl(url)
  if (isInMemoryDatabase(url)) throw new BreakwaterError('INVALID_OPTION', inMemoryRefusal)
  if (target.dialect === 'sqlite') {
    await checkBreakwaterFile(target.filename, `run ${migrateCommandFor(url, env)} first`)
    if (options.writer !== undefined) checkWritableFile(target.filename, options.writer)
  }
  return openAnsweringDatabase(url, options.signal)
}

/**
 * Throws, naming `filename` and `writer` (the command that writes to it), when this user may not
 * write the file (its mode, a read-only mount). SQLite opens such a file read-only without a
 * word: a long-running command would start, then fail each write for as long as it runs.
 */
function checkWritableFile(filename: string, writer: string): void {
  try {
    accessSync(filename, fsConstants.W_OK)
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code ?? messageOf(error)
    throw new Error(
      `${filename} is not writable by this user (${code}), and ${writer} writes to it`,
    )
  }
}

/**
 * Opens the database at `url` and, for PostgreSQL, runs one statement, so that a server that
 * does not answer, refuses the credentials, or has no such database fails here, where the
 * caller reports it as "cannot open <url>". (pg connects only at the first statement: without
 * this the failure would surface in the command itself, as its own error.) When `signal`
 * aborts first (SIGTERM), the connect is abandoned and its reason thrown: a server that never
 * answers would otherwise hold a process asked to stop for pg's whole connect timeout, and
 * then fail it as if the database had.
 */
export async function openAnsweringDatabase(url: string, signal?: AbortSignal): Promise<SqlDriver> {
  const db = await openDatabase(url)
  if (db.dialect === 'postgres') {
    // close() refuses the statement waiting for its connection and drops the connect.
    const abandon = (): void => {
      db.close().catch(() => {})
    }
    signal?.addEventListener('abort', abandon, { once: true })
    try {
      signal?.throwIfAborted()
      await db.query('SELECT 1')
    } catch (error) {
      await db.close().catch(() => {})
      signal?.throwIfAborted()
      throw missingPassword(error) ?? error
    } finally {
      signal?.removeEventListener('abort', abandon)
    }
  }
  return db
}

// pg's words when the server asks for a password (SCRAM, PostgreSQL's default since 14) and
// neither the URL, PGPASSWORD nor ~/.pgpass gave one, or gave an empty one: they name neither
// the password nor where it goes, and the relay's usage shows `postgres://user@host/db`.
const scramWithoutPassword =
  /^SASL: SCRAM-SERVER-FIRST-MESSAGE: client password must be a (non-empty )?string$/

/** The error to report for `error` when it says the password is missing; else undefined. */
function missingPassword(error: unknown): Error | undefined {
  if (!scramWithoutPassword.test(messageOf(error))) return undefined
  return new Error(
    'the server asks for a password and none was given: put it in the URL (postgres://<user>:<password>@<host>/<db>, best kept in BREAKWATER_DB_URL or BREAKWATER_BROKER_URL) or set PGPASSWORD',
    { cause: error },
  )
}

/** Checks, read-only, that `filename` is a breakwater database; `migrate` is the hint to give. */
async function checkBreakwaterFile(filename: string, migrate: string): Promise<void> {
  // `./new/` names a folder even where there is none: refused as migrate refuses it, not as a
  // missing file with a hint to run migrate, which would refuse the same path.
  if (namesFolder(filename))
    throw new InvalidOptionError('filename', 'a file, not a folder', filename)
  if (!existsSync(filename)) {
    refuseFileAsFolder(filename)
    throw new Error(`no such database file (${migrate}, which creates it)`)
  }
  const stats = statSync(filename)
  // Worded as the driver words it (src/stores/sqlite.ts), which `migrate` runs into.
  if (stats.isDirectory())
    throw new InvalidOptionError('filename', 'a file, not a folder', filename)
  if (!stats.isFile()) throw new Error('not a file')
  const Database = await loadBetterSqlite<ReadOnlyDatabase>()
  let found: unknown
  try {
    const db = new Database(filename, { readonly: true, fileMustExist: true })
    try {
      found = db
        .prepare("SELECT 1 AS found FROM sqlite_master WHERE type = 'table' AND name = ?")
        .get(migrationsTable)
    } finally {
      db.close()
    }
  } catch (error) {
    // SQLite creates <file>-shm beside a WAL database even to read it: a folder this user may
    // not write refuses a database that is fine, with SQLite's "attempt to write a readonly
    // database", which must not read as a damaged file.
    if ((error as { code?: unknown }).code === 'SQLITE_READONLY_DIRECTORY')
      throw new Error(
        `its folder ${dirname(resolve(filename))} is not writable by this user, and SQLite creates ${basename(filename)}-shm and ${basename(filename)}-wal there even to read a WAL database`,
      )
    throw new Error(`not a readable SQLite database (${(error as Error).message})`)
  }
  if (found === undefined)
    throw new Error(`not a breakwater database: it has no ${migrationsTable} table (${migrate})`)
}

/**
 * Throws INVALID_OPTION when a file stands where a folder of `filename` (which does not exist)
 * goes: `migrate` refuses that path too, so a hint to run it would lead nowhere.
 */
function refuseFileAsFolder(filename: string): void {
  const { nearest, stats } = folderChain(filename, visibleStatOf)
  if (stats !== undefined && !stats.isDirectory())
    throw new InvalidOptionError(
      'filename',
      `a path whose folders are folders (${nearest} is a file)`,
      filename,
    )
}
