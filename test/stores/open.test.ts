import { isAbsolute } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { BreakwaterError, InvalidOptionError } from '../../src/core/errors.js'
import { openDatabase, parseDatabaseUrl } from '../../src/stores/open.js'
import { createPostgresDriver } from '../../src/stores/postgres.js'
import { redactUrl } from '../../src/stores/redact.js'
import { createTestDatabase } from '../support/postgres.js'
import { createTestSqlite } from '../support/sqlite.js'

/** The `InvalidOptionError` parseDatabaseUrl throws for `url`; fails the test if it throws none. */
function urlRefusal(url: string): InvalidOptionError {
  let error: unknown
  try {
    parseDatabaseUrl(url)
  } catch (e) {
    error = e
  }
  expect(error).toBeInstanceOf(InvalidOptionError)
  return error as InvalidOptionError
}

describe('parseDatabaseUrl', () => {
  it.each([
    ['sqlite:./data/app.db', { dialect: 'sqlite', filename: './data/app.db' }],
    ['sqlite:app.db', { dialect: 'sqlite', filename: 'app.db' }],
    ['sqlite:/var/lib/app.db', { dialect: 'sqlite', filename: '/var/lib/app.db' }],
    ['sqlite:///var/lib/app.db', { dialect: 'sqlite', filename: '/var/lib/app.db' }],
    ['sqlite::memory:', { dialect: 'sqlite', filename: ':memory:' }],
    [
      'postgres://u:p@127.0.0.1:5432/db',
      { dialect: 'postgres', connectionString: 'postgres://u:p@127.0.0.1:5432/db' },
    ],
    // A Unix socket with credentials: pg reads the host from the query; WHATWG URL refuses
    // credentials without a host, pg's own parser does not.
    [
      'postgres://app:pw@/app?host=/var/run/postgresql',
      {
        dialect: 'postgres',
        connectionString: 'postgres://app:pw@/app?host=/var/run/postgresql',
      },
    ],
    [
      'postgresql://db.internal/app?sslmode=require',
      { dialect: 'postgres', connectionString: 'postgresql://db.internal/app?sslmode=require' },
    ],
  ])('%s', (url, expected) => {
    expect(parseDatabaseUrl(url)).toEqual(expected)
  })

  // A URL is percent-encoded: `%XX` in the file part stands for that byte (UTF-8), as in any
  // other URL, so a path with a space, `?` or `%` can be written at all.
  it.each([
    ['sqlite:./my%20db.sqlite', './my db.sqlite'],
    ['sqlite:///srv/data%20files/app.db', '/srv/data files/app.db'],
    ['sqlite:./what%3F.db', './what?.db'],
    ['sqlite:./100%25.db', './100%.db'],
    ['sqlite:./caf%C3%A9.db', './café.db'],
    ['sqlite:./café.db', './café.db'],
    ['sqlite:./a+b.db', './a+b.db'],
    ['sqlite:%3Amemory%3A', ':memory:'],
  ])('decodes %s', (url, filename) => {
    expect(parseDatabaseUrl(url)).toEqual({ dialect: 'sqlite', filename })
  })

  it.each([
    'sqlite:./100%.db',
    'sqlite:./bad%zz.db',
    'sqlite:./cut%2',
    'sqlite:./nul%00.db',
    'sqlite:./half%C3.db',
  ])('rejects %j, a malformed or NUL percent-escape, naming the URL', (url) => {
    const invalid = urlRefusal(url)
    expect(invalid.code).toBe('INVALID_OPTION')
    expect(invalid.option).toBe('url')
    expect(invalid.value).toBe(url)
    expect(invalid.message).toContain(JSON.stringify(url))
    expect(invalid.message).toMatch(/percent/)
  })

  // A SQLite URL takes no query: SQLite's own URI parameters (`mode=ro`, `cache=shared`) are not
  // read, and one was refused with the list of URL forms, saying nothing of the query.
  it.each([
    'sqlite:./app.db?mode=ro',
    'sqlite::memory:?cache=shared',
    'sqlite:///var/app.db?busy_timeout=100',
    'sqlite:?mode=memory',
  ])('rejects %j, a query, saying that a sqlite: URL takes none', (url) => {
    const { option, value, message } = urlRefusal(url)
    expect({ option, value, message }).toEqual({
      option: 'url',
      value: url,
      message: expect.stringMatching(/query .*%3F/),
    })
  })

  // A URL holds no raw control character: one at the end is a line ending that came with the
  // URL from a file or an env file (`BREAKWATER_DB_URL=sqlite:./app.db\r`), which would open a
  // new, empty database under a name with that character in it. Encoded, it is deliberate.
  it.each(['sqlite:./app.db\r', 'sqlite:./app.db\n', 'sqlite:./app\tdb', 'sqlite:./app.db\x7f'])(
    'rejects %j, a raw control character, naming the URL',
    (url) => {
      const error = urlRefusal(url)
      expect(error.option).toBe('url')
      expect(error.message).toMatch(/control character/)
    },
  )

  // Nothing expands a `~` after `sqlite:` (no shell, no environment file, not SQLite): it named
  // ./~/app.db, and a migration created a folder called `~` in the working directory.
  it.each([
    'sqlite:~/app.db',
    'sqlite://~/app.db',
    'sqlite:~',
    'sqlite:%7E/app.db',
    'sqlite:~\\app.db',
  ])('rejects %j, a path starting with ~, naming the URL', (url) => {
    const error = urlRefusal(url)
    expect(error.option).toBe('url')
    expect(error.message).toMatch(/~ is not expanded/)
  })

  it.each([
    ['sqlite:./~/app.db', './~/app.db'],
    ['sqlite:~app.db', '~app.db'],
    ['sqlite:./file:x.db', './file:x.db'],
    ['sqlite:profile:x.db', 'profile:x.db'],
  ])('takes %j: a folder or file that merely starts with ~ or holds file:', (url, filename) => {
    expect(parseDatabaseUrl(url)).toEqual({ dialect: 'sqlite', filename })
  })

  // SQLite reads `file:` URI filenames only when URIs are turned on, which the driver does not
  // do: `sqlite:file:./dev.db` (Prisma's and libSQL's form) made a folder named `file:.` in the
  // working directory and a new, empty database in it.
  it.each([
    'sqlite:file:./dev.db',
    'sqlite:file:dev.db',
    'sqlite:FILE:/var/app.db',
    'sqlite:file%3A./dev.db',
    'sqlite:file::memory:',
  ])('rejects %j, a SQLite URI filename, naming the URL', (url) => {
    const { option, message } = urlRefusal(url)
    expect({ option, message }).toEqual({
      option: 'url',
      message: expect.stringMatching(/not a file: URI.*sqlite:\.\/dev\.db/),
    })
  })

  it('takes a control character that is percent-encoded', () => {
    expect(parseDatabaseUrl('sqlite:./odd%0Aname.db')).toEqual({
      dialect: 'sqlite',
      filename: './odd\nname.db',
    })
  })

  // pg passes every query parameter of the URL through and reads only those it knows, so a
  // misspelt or libpq-only one (`ssl_mode=require`: no TLS at all; `dbname=orders`: the default
  // database) was ignored without a word, and an sslmode or ssl value it does not know turned
  // TLS on (`ssl=false` too). libpq refuses all of them; so does breakwater now.
  it.each([
    ['postgres://app:s3cret@db/app?ssl_mode=require', /"ssl_mode"/],
    ['postgres://app:s3cret@db/app?sslMode=require', /"sslMode"/],
    ['postgres://app:s3cret@db?dbname=orders', /"dbname".*the path/],
    ['postgres://app:s3cret@db/app?connect_timeout=5', /"connect_timeout".*connectionTimeoutMs/],
    ['postgres://app:s3cret@db/app?target_session_attrs=read-write', /"target_session_attrs"/],
    ['postgres://app:s3cret@db/app?sslmode=requre', /sslmode.*"requre"/],
    ['postgres://app:s3cret@db/app?ssl=false', /ssl.*"false"/],
    ['postgres://app@db/app?sslpassword=s3cret', /"sslpassword"/],
    // Port 0 parses, but nothing listens there: pg would fail every connection.
    ['postgres://app:s3cret@db:0/app', /port is from 1 to 65535/],
    ['postgres://app:s3cret@db/app?port=0', /port is from 1 to 65535/],
    ['postgres://app:s3cret@db/app?port=5x', /port is from 1 to 65535/],
    // pg reads the timeouts with parseInt (server ones) or hands the text to setTimeout
    // (query_timeout): `1s` was 1 ms, and a query_timeout of 0, `abc`, `-5` or past 2^31 - 1
    // failed every statement after 1 ms with "Query read timeout".
    ['postgres://app:s3cret@db/app?statement_timeout=1s', /statement_timeout.*milliseconds.*"1s"/],
    ['postgres://app:s3cret@db/app?lock_timeout=-5', /lock_timeout.*milliseconds.*"-5"/],
    [
      'postgres://app:s3cret@db/app?idle_in_transaction_session_timeout=x',
      /idle_in_transaction_session_timeout.*"x"/,
    ],
    ['postgres://app:s3cret@db/app?statement_timeout=2147483648', /statement_timeout.*2147483647/],
    ['postgres://app:s3cret@db/app?query_timeout=0', /query_timeout.*from 1 .*leave it out.*"0"/],
    ['postgres://app:s3cret@db/app?query_timeout=abc', /query_timeout.*"abc"/],
    ['postgres://app:s3cret@db/app?query_timeout=99999999999', /query_timeout.*"99999999999"/],
    ['postgres://app:s3cret@db/app?query_timeout=100ms', /query_timeout.*"100ms"/],
  ])('rejects %j, a query parameter pg would ignore or misread, naming it', async (url, says) => {
    for (const parse of [
      async () => parseDatabaseUrl(url),
      () => createPostgresDriver({ connectionString: url }),
    ]) {
      const error: unknown = await parse().catch((e: unknown) => e)
      expect(error).toBeInstanceOf(InvalidOptionError)
      const invalid = error as InvalidOptionError
      expect(['url', 'connectionString']).toContain(invalid.option)
      expect(invalid.message).toMatch(says)
      expect(invalid.message).not.toContain('s3cret')
    }
  })

  it.each([
    'postgres://app:pw@[::1]:5432/app?sslmode=verify-full&application_name=a',
    'postgres://app@db/app?sslmode=disable&options=-c%20search_path%3Dx&statement_timeout=5000',
    'postgres://db/app?user=a&password=b&port=5433&host=db2&ssl=no-verify&client_encoding=UTF8',
    'postgres://db/app?uselibpqcompat=true&sslmode=prefer&lock_timeout=10&sslnegotiation=direct',
    'postgres://db/app?statement_timeout=0&lock_timeout=2147483647&query_timeout=2147483647',
    'postgres://db/app?idle_in_transaction_session_timeout=0&query_timeout=1',
  ])('takes %j, whose query parameters pg reads', (url) => {
    expect(parseDatabaseUrl(url)).toEqual({ dialect: 'postgres', connectionString: url })
  })

  it.each([
    ['mysql://root:s3cret@db/app', 'mysql://root:***@db/app'],
    ['sqlite:', 'sqlite:'],
    ['postgres://', 'postgres://'],
    ['./app.db', './app.db'],
    ['', ''],
  ])('rejects %j naming the URL without its password', (url, shown) => {
    const invalid = urlRefusal(url)
    expect(invalid.option).toBe('url')
    expect(invalid.value).toBe(shown)
    expect(invalid.message).toContain(JSON.stringify(shown))
    expect(invalid.message).not.toContain('s3cret')
  })
})

describe('redactUrl', () => {
  it.each([
    ['postgres://app:secret@db:5432/app', 'postgres://app:***@db:5432/app'],
    ['postgres://app@db/app', 'postgres://app@db/app'],
    ['postgres://db/app?user=a&password=secret&x=1', 'postgres://db/app?user=a&password=***&x=1'],
    ['postgres://a:p%40ss@db/app', 'postgres://a:***@db/app'],
    ['sqlite:./x.db', 'sqlite:./x.db'],
    // A password with an unencoded /, ? or # (a generated one): the URL does not parse, and it
    // is exactly then that the URL is shown in an error message.
    ['postgres://app:pa/ss@db:5432/app', 'postgres://app:***@db:5432/app'],
    ['postgres://app:p?ss@db/app', 'postgres://app:***@db/app'],
    ['postgres://app:p#ss@db/app', 'postgres://app:***@db/app'],
    ['postgres://app:p@s/s@db/app', 'postgres://app:***@db/app'],
    ['postgres://app@db/app?application_name=a@b', 'postgres://app@db/app?application_name=a@b'],
    // A libpq key passphrase: pg does not read it, so the URL is refused, shown in the message.
    ['postgresql://db/x?sslpassword=secret&x=1', 'postgresql://db/x?sslpassword=***&x=1'],
    // Written without // (a typo): refused, and quoted in the refusal. The credentials sit in
    // what would be the path, where no userinfo is found.
    ['postgres:app:secret@db/app', 'postgres:***@db/app'],
    ['postgres:/app:secret@db/app?x=a@b', 'postgres:/***@db/app?x=a@b'],
    ['app:secret@db/app', 'app:***@db/app'],
    // A SQLite file name may hold an @: it is no credential.
    ['sqlite:./backups/app@2026.db', 'sqlite:./backups/app@2026.db'],
  ])('%s', (url, expected) => {
    expect(redactUrl(url)).toBe(expected)
  })
})

describe('openDatabase', () => {
  const files = [createTestSqlite('open-a'), createTestSqlite('open-b')]
  afterAll(() => {
    for (const file of files) file.cleanup()
  })

  it('opens SQLite files by relative-to-cwd or absolute URL, and in memory', async () => {
    expect(isAbsolute(files[0]!.filename)).toBe(true)
    const a = await openDatabase(files[0]!.url)
    const b = await openDatabase(`sqlite://${files[1]!.filename}`)
    const memory = await openDatabase('sqlite::memory:', { sqlite: { busyTimeoutMs: 10 } })
    try {
      for (const db of [a, b, memory]) {
        expect(db.dialect).toBe('sqlite')
        expect(await db.query('SELECT 1 AS one')).toEqual([{ one: 1 }])
      }
      expect(await memory.query('PRAGMA busy_timeout')).toEqual([{ timeout: 10 }])
    } finally {
      await Promise.all([a.close(), b.close(), memory.close()])
    }
  })

  it('opens PostgreSQL by postgres:// and postgresql:// URL, the scheme in any case', async () => {
    const database = await createTestDatabase('open')
    try {
      // parseDatabaseUrl (and so the CLI's --db check) takes the scheme in any case, as URL
      // schemes are: opening must not then refuse what it accepted.
      for (const url of [
        database.url,
        database.url.replace(/^postgres:/, 'postgresql:'),
        database.url.replace(/^postgres:/, 'POSTGRESQL:'),
      ]) {
        const db = await openDatabase(url, { postgres: { maxConnections: 2 } })
        try {
          expect(db.dialect).toBe('postgres')
          expect(await db.query('SELECT current_database() AS name')).toEqual([
            { name: database.name },
          ])
        } finally {
          await db.close()
        }
      }
    } finally {
      await database.drop()
    }
  })

  it('applies timeouts given in the URL as milliseconds, on the server and on the client', async () => {
    const database = await createTestDatabase('open-timeouts')
    try {
      const db = await openDatabase(
        `${database.url}?statement_timeout=1500&lock_timeout=0&query_timeout=60000`,
        { postgres: { maxConnections: 1 } },
      )
      try {
        // A statement well within query_timeout runs (a query_timeout misread as 1 ms failed
        // every one with "Query read timeout").
        expect(
          await db.query(
            "SELECT current_setting('statement_timeout') AS statement, current_setting('lock_timeout') AS lock",
          ),
        ).toEqual([{ statement: '1500ms', lock: '0' }])
      } finally {
        await db.close()
      }
    } finally {
      await database.drop()
    }
  })

  it('rejects an unknown scheme before loading any driver', async () => {
    const error = await openDatabase('redis://:hunter2@localhost:6379').catch((e) => e)
    expect(BreakwaterError.is(error) && error.code).toBe('INVALID_OPTION')
    expect(error.message).not.toContain('hunter2')
    expect(error.message).toContain('redis://:***@localhost:6379')
  })

  it('rejects a malformed postgres:// URL before connecting, naming it without its password', async () => {
    for (const url of [
      'postgres://app:hunter2@127.0.0.1:abc/x',
      'postgres://app:hunter2@127.0.0.1:99999/x',
      'postgresql://[::1:1/x',
      'postgres://app:hunter2/x@127.0.0.1/x',
      'postgres://app:hunter2#x@127.0.0.1/x',
    ]) {
      const error = await openDatabase(url).catch((e) => e)
      expect(BreakwaterError.is(error) && error.code).toBe('INVALID_OPTION')
      expect(error.message).toContain('a valid postgres:// URL')
      expect(error.message).not.toContain('hunter2')
    }
  })

  // The per-driver settings are nested: a flat one (`{ maxConnections: 20 }`) or a driver's
  // settings that are no object were ignored without a word, the driver opening with defaults.
  it.each([
    [{ maxConnections: 20 }, 'options.maxConnections'],
    [{ busyTimeoutMs: 100 }, 'options.busyTimeoutMs'],
    [{ postgress: { maxConnections: 2 } }, 'options.postgress'],
    [{ sqlite: 5 }, 'options.sqlite'],
    [{ postgres: 'maxConnections=2' }, 'options.postgres'],
    [{ sqlite: [] }, 'options.sqlite'],
    [{ postgres: null }, 'options.postgres'],
    // What the URL says: a second, different answer would be ignored.
    [{ sqlite: { filename: './other.db' } }, 'options.sqlite.filename'],
    [{ postgres: { connectionString: 'postgres://db/x' } }, 'options.postgres.connectionString'],
  ])('refuses the options %j naming %s', async (options, option) => {
    const error = await openDatabase('sqlite::memory:', options as never).catch((e) => e)
    expect(error).toBeInstanceOf(InvalidOptionError)
    expect(error.option).toBe(option)
  })

  it('takes either driver settings, or none', async () => {
    const db = await openDatabase('sqlite::memory:', {
      sqlite: { busyTimeoutMs: 10 },
      postgres: { maxConnections: 2 },
    })
    await db.close()
    await (await openDatabase('sqlite::memory:', { sqlite: undefined } as never)).close()
  })

  it('passes per-driver options through and validates them', async () => {
    await expect(
      openDatabase('sqlite::memory:', { sqlite: { statementCacheSize: 0 } }),
    ).rejects.toThrow(/statementCacheSize: expected an integer >= 1, got 0/)
    await expect(
      openDatabase('postgres://u:pw@127.0.0.1:1/db', { postgres: { statementTimeoutMs: -5 } }),
    ).rejects.toThrow(/statementTimeoutMs/)
  })
})
