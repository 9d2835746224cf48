import { InvalidOptionError } from '../core/errors.js'
import { checkObject } from '../core/validate.js'
import {
  createPostgresDriver,
  isParsablePostgresUrl,
  type PostgresDriverOptions,
} from './postgres.js'
import { redactUrl } from './redact.js'
import { createSqliteDriver, type SqliteDriverOptions } from './sqlite.js'
import type { SqlDriver } from './types.js'

/** Options of {@link openDatabase}: per-driver settings, used when the URL selects that driver. */
export interface OpenDatabaseOptions {
  /**
   * Settings for `sqlite:` URLs (the file comes from the URL).
   * @default {}
   */
  readonly sqlite?: Omit<SqliteDriverOptions, 'filename'>
  /**
   * Settings for `postgres://` URLs (the connection comes from the URL).
   * @default {}
   */
  readonly postgres?: Omit<PostgresDriverOptions, 'connectionString'>
}

/** What a database URL selects. */
export type DatabaseTarget =
  | { readonly dialect: 'sqlite'; readonly filename: string }
  | { readonly dialect: 'postgres'; readonly connectionString: string }

const expected = 'a database URL: sqlite:<file>, sqlite::memory: or postgres://...'

/**
 * Parses a database URL without opening anything. `sqlite:./path.db`, `sqlite:path.db` and
 * `sqlite:///abs/path.db` / `sqlite:/abs/path.db` name a file; `sqlite::memory:` an in-memory
 * database; `postgres://` and `postgresql://` a PostgreSQL server. Anything else throws
 * `InvalidOptionError` naming the URL with its password hidden.
 */
export function parseDatabaseUrl(url: string): DatabaseTarget {
  if (typeof url !== 'string') throw new InvalidOptionError('url', expected, url)
  if (/^postgres(ql)?:\/\/./i.test(url)) {
    // pg would refuse it later, as "Invalid URL" with nothing to say which setting held it.
    if (!isParsablePostgresUrl(url))
      throw new InvalidOptionError('url', 'a valid postgres:// URL', redactUrl(url))
    return { dialect: 'postgres', connectionString: url }
  }
  if (/^sqlite:/i.test(url)) {
    let filename = url.slice('sqlite:'.length)
    // sqlite:///abs/path -> /abs/path, sqlite://rel.db -> rel.db
    if (filename.startsWith('//')) filename = filename.slice(2)
    if (filename !== '' && !filename.includes('?')) return { dialect: 'sqlite', filename }
  }
  throw new InvalidOptionError('url', expected, redactUrl(url))
}

/**
 * Opens the database a URL names: SQLite through better-sqlite3 (`sqlite:./.breakwater/app.db`,
 * `sqlite::memory:`) or PostgreSQL through pg (`postgres://user:pass@host:5432/db`). The driver
 * package is loaded only now, so an application that uses one never loads the other.
 *
 * @example
 * ```ts
 * const db = await openDatabase(process.env.DATABASE_URL ?? 'sqlite:./.breakwater/app.db')
 * await db.transaction(async (tx) => {
 *   await tx.execute('UPDATE accounts SET balance = balance - $1 WHERE id = $2', [10, 'a1'])
 * })
 * await db.close()
 * ```
 */
export async function openDatabase(
  url: string,
  options: OpenDatabaseOptions = {},
): Promise<SqlDriver> {
  checkObject('options', options)
  const target = parseDatabaseUrl(url)
  if (target.dialect === 'sqlite') {
    return createSqliteDriver({ ...options.sqlite, filename: target.filename })
  }
  return createPostgresDriver({ ...options.postgres, connectionString: target.connectionString })
}
