import { InvalidOptionError } from '../core/errors.js'
import { checkObject, checkOptionKeys, optionKeys } from '../core/validate.js'
import {
  createPostgresDriver,
  type PostgresDriverOptions,
  postgresDriverOptions,
  postgresUrlDefect,
} from './postgres.js'
import { redactUrl } from './redact.js'
import { createSqliteDriver, type SqliteDriverOptions, sqliteDriverOptions } from './sqlite.js'
import type { SqlDriver } from './types.js'

/**
 * Options of {@link openDatabase}: per-driver settings, used when the URL selects that driver.
 * Any other key (a driver setting given flat, `{ maxConnections: 20 }`), a driver's settings that
 * are not an object, an unknown (misspelt) key in them (whichever driver the URL selects), or a
 * file or connection string besides the URL's, is refused with `InvalidOptionError`: it would
 * otherwise be ignored, the driver opening with its defaults.
 */
export interface OpenDatabaseOptions {
  /**
   * Settings for `sqlite:` URLs (the file comes from the URL).
   * @default {}
   */
  readonly sqlite?: Omit<SqliteDriverOptions, 'filename'> | undefined
  /**
   * Settings for `postgres://` URLs (the connection comes from the URL).
   * @default {}
   */
  readonly postgres?: Omit<PostgresDriverOptions, 'connectionString'> | undefined
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
 * `sqlite://rel.db` names the relative file `rel.db` (the `//` is dropped), but a `sqlite://`
 * URL with a further `/` after a non-empty part (`sqlite://host/var/app.db`) is refused: as a
 * URL it names the host `host` and the path `/var/app.db`, and SQLite reaches no file on another
 * machine, while taking it as the relative file `host/var/app.db` quietly created a new, empty
 * database there. Write `sqlite:///var/app.db` for the absolute path, `sqlite:./host/app.db` for
 * the relative one.
 *
 * A `postgres://` URL's query parameters must be ones pg reads (`sslmode`, `host`,
 * `application_name`, `options`, ...; the message lists them), with an `sslmode` or `ssl` value
 * pg knows: pg ignores any other parameter without a word (`ssl_mode=require` would connect
 * without TLS, libpq's `dbname` or `connect_timeout` would change nothing), and turns TLS on for
 * an `sslmode` or `ssl` value it does not know (`ssl=false` too). libpq refuses them as well.
 * `statement_timeout`, `lock_timeout`, `idle_in_transaction_session_timeout` and
 * `query_timeout` are whole milliseconds up to 2147483647 (0: no limit, except
 * `query_timeout`, left out for none): pg reads no unit (`1s` would be 1 ms), and a
 * `query_timeout` of `0` or a non-number made every statement fail after 1 ms.
 * The user and password are percent-decoded whole (`p%40ss` is `p@ss`), but pg decodes the
 * database name as `decodeURI` does, leaving `%2F`, `%23`, `%3F`, `%40`, `%3A` and the other
 * reserved escapes as written: a database whose name holds one of `/#?@:&=+$,;` cannot be
 * named in a URL (the server answers that `orders%232` does not exist); rename it, or connect
 * with pg yourself and wrap the client with `fromPgClient`. The URL is passed to pg as is.
 *
 * The file part of a `sqlite:` URL is percent-decoded, as in any URL (and as pg decodes the
 * parts of a `postgres://` one): `sqlite:./my%20db.sqlite` names `./my db.sqlite`, `%3F` a `?`,
 * `%25` a `%`; `%XX` escapes are read as UTF-8. So a `%` that does not start a valid escape
 * (`%zz`, `100%.db`, a lone `%C3`), or an escape that decodes to NUL (which would cut the path
 * short where the C library reads it), is refused with `InvalidOptionError` rather than taken
 * as a literal name. So is a raw control character (`\r`, `\n`, tab, DEL): none belongs in a
 * URL, and one is mostly a line ending read with the URL from a file, which would open a new,
 * empty database under an odd name (encoded, as `%0A`, it is taken). A raw `?` is refused,
 * saying so (a SQLite URL takes no query, `?mode=ro` included: encode a `?` as `%3F`); a raw
 * space is taken, as before; `+` and `#` are taken as they are (`+` is no space outside form data, and a URL to a
 * file has no use for a fragment). `sqlite:%3Amemory%3A` decodes to `:memory:` and so is the
 * in-memory database, like `sqlite::memory:`. A path that starts with `~` (`sqlite:~/app.db`) is
 * refused: nothing expands it here, so it would name a folder called `~` in the working
 * directory; write the whole path, or `./~` for a folder really named `~`. So is a SQLite URI
 * filename (`sqlite:file:./dev.db`, Prisma's and libSQL's form): the driver does not turn
 * SQLite's URI filenames on, so it would be a literal path, a new database in a folder named
 * `file:.`; write `sqlite:./dev.db`.
 */
export function parseDatabaseUrl(url: string): DatabaseTarget {
  if (typeof url !== 'string') throw new InvalidOptionError('url', expected, url)
  if (/^postgres(ql)?:\/\/./i.test(url)) {
    // pg would refuse it later, as "Invalid URL" with nothing to say which setting held it, or
    // ignore a query parameter it does not know.
    const defect = postgresUrlDefect(url)
    if (defect !== undefined) throw new InvalidOptionError('url', defect, redactUrl(url))
    return { dialect: 'postgres', connectionString: url }
  }
  const path = sqlitePath(url)
  if (path !== undefined) {
    const defect = sqliteUrlDefectOf(url, path)
    if (defect !== undefined) throw new InvalidOptionError('url', defect, redactUrl(url))
    return { dialect: 'sqlite', filename: decodeURIComponent(path) }
  }
  throw new InvalidOptionError('url', expected, redactUrl(url))
}

const validEscapes =
  'a sqlite: URL whose percent-escapes are valid UTF-8 and not %00 (write a % in a file name as %25)'
const noHomeFolder =
  'a sqlite: path that does not start with ~ (~ is not expanded here: write the whole path, or ./~ for a folder named ~)'
const noFileUri =
  'a sqlite: path, not a file: URI (SQLite URI filenames are not read here: write sqlite:./dev.db for ./dev.db, or sqlite:./file:x for a file really named so)'
const noControlCharacters =
  'a sqlite: URL without raw control characters (a line ending pasted with it?); percent-encode one that belongs in the file name'

/**
 * What is wrong with the file part of a `sqlite:` URL, as what was expected instead; undefined
 * when it decodes (see {@link parseDatabaseUrl}).
 */
function sqlitePathDefect(encoded: string): string | undefined {
  // biome-ignore lint/suspicious/noControlCharactersInRegex: finding control characters is the point
  if (/[\x00-\x1f\x7f]/.test(encoded)) return noControlCharacters
  let decoded: string
  try {
    decoded = decodeURIComponent(encoded)
  } catch {
    // URIError: a `%` without two hex digits after it, or escapes that are not UTF-8.
    return validEscapes
  }
  if (decoded.includes('\0')) return validEscapes
  // Nothing expands a `~` after `sqlite:` (no shell does there, no environment file does, nor
  // does SQLite): the file would be ./~/..., and a migration would create a folder named `~`
  // where the process runs, one `rm -rf ~` away from the home folder.
  if (/^~([/\\]|$)/.test(decoded)) return noHomeFolder
  // SQLite reads a `file:` URI only with URIs turned on, which the driver does not do: the
  // path would be literal, `file:./dev.db` a new database in a folder named `file:.`.
  if (/^file:/i.test(decoded)) return noFileUri
  return undefined
}

/**
 * What `url`, a `sqlite:` URL refused by {@link parseDatabaseUrl} for its file part, was
 * expected to be; undefined for any other URL. The CLI words its own message with it.
 * @internal
 */
export function sqliteUrlDefect(url: string): string | undefined {
  const path = sqlitePath(url)
  return path === undefined ? undefined : sqliteUrlDefectOf(url, path)
}

// SQLite reads URI parameters (`mode=ro`, `cache=shared`) only from `file:` URIs, which the
// driver does not open; a query here would be dropped or become part of the file's name.
const noQuery =
  'a sqlite: URL without a query (?...): it takes no parameters (set busyTimeoutMs and the others in options.sqlite); percent-encode a ? in the file name as %3F'

const noHost =
  'a sqlite: URL without a host (SQLite opens no file on another machine): write sqlite:///abs/path for an absolute path, sqlite:./rel/path for a relative one'

/**
 * What is wrong with `url`, whose still-encoded file part is `path`: first its file part (see
 * {@link sqlitePathDefect}), then a host. `sqlite://X/Y` reads, as any URL, as the host X and
 * the path /Y; it was taken as the relative file X/Y, so `sqlite://db-server/var/app.db` quietly
 * made ./db-server/var/app.db. `sqlite://rel.db` (no further `/`) stays a relative file, as
 * documented, and `sqlite:///abs` (an empty host) an absolute one.
 */
function sqliteUrlDefectOf(url: string, path: string): string | undefined {
  // Before the file part: `app.db?mode=ro` is a query, not a file name with a `?` in it.
  if (path.includes('?')) return noQuery
  const defect = sqlitePathDefect(path)
  if (defect !== undefined) return defect
  if (/^sqlite:\/\/[^/]+\//i.test(url)) return noHost
  return undefined
}

/**
 * The still-encoded file part of a `sqlite:` URL (with any query, which
 * {@link sqliteUrlDefectOf} refuses); undefined when `url` is no such URL or names no file.
 */
function sqlitePath(url: string): string | undefined {
  if (!/^sqlite:/i.test(url)) return undefined
  let path = url.slice('sqlite:'.length)
  // sqlite:///abs/path -> /abs/path, sqlite://rel.db -> rel.db
  if (path.startsWith('//')) path = path.slice(2)
  return path !== '' ? path : undefined
}

/** The URL names the file or server: a driver's settings must not name another one. */
const fromUrl = { sqlite: 'filename', postgres: 'connectionString' } as const

/** The keys OpenDatabaseOptions takes (internal: not exported from the package root). */
export const openOptions = optionKeys<OpenDatabaseOptions>({ sqlite: true, postgres: true })

/** Each driver's own option keys: its settings are checked whichever driver the URL selects. */
const driverOptions = { sqlite: sqliteDriverOptions, postgres: postgresDriverOptions } as const

function checkOpenOptions(options: OpenDatabaseOptions): void {
  checkObject('options', options)
  for (const name of Object.keys(options)) {
    const key = name as keyof OpenDatabaseOptions
    // Not checkOptionKeys: this message says where a flat driver setting goes instead.
    if (!openOptions.has(key))
      throw new InvalidOptionError(
        `options.${key}`,
        'no such option: per-driver settings go under options.sqlite or options.postgres',
        options[key],
      )
    const settings: unknown = options[key]
    if (settings === undefined) continue
    const given = checkObject(`options.${key}`, settings)
    checkOptionKeys(`options.${key}`, given, driverOptions[key])
    const named = fromUrl[key]
    const value = given[named]
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
