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

/**
 * Options of {@link openDatabase}: per-driver settings, used when the URL selects that driver.
 * Any other key (a driver setting given flat, `{ maxConnections: 20 }`), a driver's settings that
 * are not an object, or a file or connection string besides the URL's, is refused with
 * `InvalidOptionError`: it would otherwise be ignored, the driver opening with its defaults.
 */
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
 *
 * The file part of a `sqlite:` URL is percent-decoded, as in any URL (and as pg decodes the
 * parts of a `postgres://` one): `sqlite:./my%20db.sqlite` names `./my db.sqlite`, `%3F` a `?`,
 * `%25` a `%`; `%XX` escapes are read as UTF-8. So a `%` that does not start a valid escape
 * (`%zz`, `100%.db`, a lone `%C3`), or an escape that decodes to NUL (which would cut the path
 * short where the C library reads it), is refused with `InvalidOptionError` rather than taken
 * as a literal name. A raw `?` is refused as before (a SQLite URL takes no query: encode it as
 * `%3F`); `+` and `#` are taken as they are (`+` is no space outside form data, and a URL to a
 * file has no use for a fragment). `sqlite:%3Amemory%3A` decodes to `:memory:` and so is the
 * in-memory database, like `sqlite::memory:`.
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
    if (filename !== '' && !filename.includes('?'))
      return { dialect: 'sqlite', filename: decodeSqlitePath(filename, url) }
  }
  throw new InvalidOptionError('url', expected, redactUrl(url))
}

/**
 * What a `sqlite:` URL refused for its percent-escapes was expected to be (the CLI words its own
 * message with it).
 */
export const validSqliteEscapes =
  'a sqlite: URL whose percent-escapes are valid UTF-8 and not %00 (write a % in a file name as %25)'

/** Whether `url` is a `sqlite:` URL whose percent-escapes do not decode (see {@link parseDatabaseUrl}). */
export function hasBadSqliteEscapes(url: string): boolean {
  try {
    parseDatabaseUrl(url)
    return false
  } catch (error) {
    return error instanceof InvalidOptionError && error.message.includes(validSqliteEscapes)
  }
}

/** The file part of a `sqlite:` URL, percent-decoded (see {@link parseDatabaseUrl}). */
function decodeSqlitePath(encoded: string, url: string): string {
  let decoded: string | undefined
  try {
    decoded = decodeURIComponent(encoded)
  } catch {
    // URIError: a `%` without two hex digits after it, or escapes that are not UTF-8.
  }
  if (decoded === undefined || decoded.includes('\0'))
    throw new InvalidOptionError('url', validSqliteEscapes, redactUrl(url))
  return decoded
}

/** The URL names the file or server: a driver's settings must not name another one. */
const fromUrl = { sqlite: 'filename', postgres: 'connectionString' } as const

function checkOpenOptions(options: OpenDatabaseOptions): void {
  checkObject('options', options)
  for (const key of Object.keys(options)) {
    if (key !== 'sqlite' && key !== 'postgres')
      throw new InvalidOptionError(
        `options.${key}`,
        'no such option: per-driver settings go under options.sqlite or options.postgres',
        options[key as keyof OpenDatabaseOptions],
      )
    const settings: unknown = options[key]
    if (settings === undefined) continue
    checkObject(`options.${key}`, settings)
    const named = fromUrl[key]
    const value = (settings as Record<string, unknown>)[named]
    if (value !== undefined)
      throw new InvalidOptionError(
        `options.${key}.${named}`,
        `nothing: the URL gives the ${key === 'sqlite' ? 'file' : 'connection'}`,
        typeof value === 'string' ? redactUrl(value) : value,
      )
  }
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
  checkOpenOptions(options)
  const target = parseDatabaseUrl(url)
  if (target.dialect === 'sqlite') {
    return createSqliteDriver({ ...options.sqlite, filename: target.filename })
  }
  return createPostgresDriver({ ...options.postgres, connectionString: target.connectionString })
}
