// relayCommand in-process: argument errors exit 2 with a message naming the problem, startup
// failures exit 1, and no password ever reaches the output.
import { existsSync } from 'node:fs'
import { describe, expect, it } from 'vitest'
import { migrateIdempotency } from '../../src/idempotency/index.js'
import { migrateOutbox, migrateSqlQueue, outboxMigrations } from '../../src/outbox/index.js'
import { listAppliedMigrations, openDatabase } from '../../src/stores/index.js'
import { createTestDatabase } from '../support/postgres.js'
import { createTestSqlite } from '../support/sqlite.js'
import { runRelay as run } from './relay-support.js'

describe('breakwater relay: argument errors', () => {
  const cases: Array<[string[], Record<string, string>, string]> = [
    [['--batch-size', '0'], {}, '--batch-size must be an integer from 1 to 10000, got "0"'],
    [['--batch-size=12x'], {}, '--batch-size must be an integer from 1 to 10000, got "12x"'],
    [['--metrics-port', '70000'], {}, '--metrics-port must be an integer from 0 to 65535'],
    [['--db'], {}, '--db needs a value'],
    [['--db', '--broker'], {}, '--db needs a value'],
    [['--bogus'], {}, 'unknown option "--bogus"'],
    [['stray'], {}, 'unexpected argument "stray"'],
    [['--batch-size', '5', '--batch-size', '6'], {}, '--batch-size given twice'],
    [['--ordering', 'random'], {}, '--ordering must be "confirmed" or "batch"'],
    [['--log-level', 'loud'], {}, '--log-level must be one of debug, info, warn, error, silent'],
    [['--topic-prefix', 'a b'], {}, '--topic-prefix must be visible ASCII characters'],
    [['--lease-ms', '10'], {}, '--lease-ms must be an integer from 30'],
    [['--max-payload-bytes', '0'], {}, '--max-payload-bytes must be an integer from 1'],
    [['--max-payload-bytes', '1MiB'], {}, '--max-payload-bytes must be an integer from 1'],
    [['--broker', 'kafka://k:9092'], {}, '--broker: unsupported broker "kafka://k:9092"'],
    // A database URL as the broker is told what is wrong with it, as --db is.
    [
      ['--broker', 'sqlite:./100%.db'],
      {},
      '--broker: expected a sqlite: URL whose percent-escapes are valid',
    ],
    [['--broker', 'postgres://q@[db/q'], {}, '--broker: expected a valid postgres:// URL'],
    [
      ['--broker', 'sql:', '--webhook-batch'],
      {},
      '--webhook-batch applies only to an http(s):// --broker',
    ],
    [['--webhook-secret', 'abc'], {}, '--webhook-secret: secrets are not accepted as arguments'],
    // Without --metrics-port no server starts: the address would be ignored silently.
    [['--metrics-host', '0.0.0.0'], {}, '--metrics-host applies only with --metrics-port'],
    [['--stats-interval-ms', '5000'], {}, '--stats-interval-ms applies only with --metrics-port'],
    [
      ['--metrics-port', '0', '--stats-interval-ms', '-1'],
      {},
      '--stats-interval-ms must be an integer from 0',
    ],
    [
      ['--broker', 'https://hooks.example.com/x'],
      {},
      'a webhook --broker needs a signing secret: set BREAKWATER_WEBHOOK_SECRET or pass --webhook-secret-file',
    ],
    // A --webhook-secret-env value is not shown (the secret itself may have been given there).
    [
      ['--broker', 'https://hooks.example.com/x', '--webhook-secret-env', 'HOOK_KEY'],
      {},
      'a webhook --broker needs a signing secret: the environment variable that --webhook-secret-env names is not set (or is empty); set it or pass --webhook-secret-file',
    ],
    [
      ['--broker', 'https://hooks.example.com/x', '--webhook-secret-env', 'HOOK_KEY'],
      { HOOK_KEY: 'short' },
      'the webhook secret from the environment variable that --webhook-secret-env names is shorter than 16 bytes',
    ],
    [
      ['--broker', 'https://hooks.example.com/x', '--webhook-secret-file', '/nonexistent/secret'],
      {},
      '--webhook-secret-file: cannot read "/nonexistent/secret": ENOENT',
    ],
    [[], { BREAKWATER_CRASH_AT: 'relay:nowhere' }, 'BREAKWATER_CRASH_AT'],
    // A bad URL from the environment names the variable, not a flag that was never given.
    [
      [],
      { BREAKWATER_BROKER_URL: 'kafka://k:9092' },
      'BREAKWATER_BROKER_URL: unsupported broker "kafka://k:9092"',
    ],
    [[], { BREAKWATER_BROKER_URL: 'nats://' }, 'BREAKWATER_BROKER_URL: the URL names no host'],
    [
      [],
      { BREAKWATER_DB_URL: 'mysql://db/app' },
      'BREAKWATER_DB_URL: expected sqlite:<file> or postgres://',
    ],
    [
      ['--broker', 'nats://'],
      { BREAKWATER_BROKER_URL: 'nats://n:4222' },
      '--broker: the URL names no host',
    ],
  ]

  for (const [args, env, message] of cases) {
    it(`${JSON.stringify(args)} ${JSON.stringify(env)}`, async () => {
      const result = await run(args, env)
      expect(result.code).toBe(2)
      expect(result.stderr).toContain(`breakwater relay: ${message}`)
      expect(result.stderr).toContain('usage: breakwater relay')
      expect(result.stdout).toBe('')
    })
  }

  it('never prints a password given in a bad URL', async () => {
    for (const args of [
      ['--broker', 'ftp://user:hunter2-pw@host/x'],
      ['--db', 'mysql://root:hunter2-pw@db/app'],
      ['--broker', 'nats://user:hunter2-pw@'],
      ['--db', 'postgres://app:hunter2-pw@db/app', '--batch-size', 'x'],
      // Nor a query value of a broker URL refused before its query is read: it may be a
      // credential under another name than password.
      ['--broker', 'amqp://host:99999/?pass=hunter2-pw'],
      ['--broker', 'amqp:///?token=hunter2-pw'],
      ['--broker', 'kafka://host?secret=hunter2-pw'],
      ['--broker', 'amqp://host:0/?pass=hunter2-pw'],
    ]) {
      const result = await run(args)
      expect(result.code).toBe(2)
      expect(result.all).not.toContain('hunter2')
    }
    // What is no variable name may be the secret itself, given to the wrong flag.
    const misplaced = await run([
      '--broker',
      'https://hooks.example.com/x',
      '--webhook-secret-env=hunter2-pw secret',
    ])
    expect(misplaced.code).toBe(2)
    expect(misplaced.stderr).toContain('--webhook-secret-env must name an environment variable')
    expect(misplaced.all).not.toContain('hunter2')
    // A secret that happens to look like a variable name is not echoed either.
    const secretAsName = await run([
      '--broker',
      'https://hooks.example.com/x',
      '--webhook-secret-env',
      'sk_live_abcdef1234567890',
    ])
    expect(secretAsName.code).toBe(2)
    expect(secretAsName.stderr).toContain('needs a signing secret')
    expect(secretAsName.all).not.toContain('abcdef1234567890')
    const fromEnv = await run([], { BREAKWATER_BROKER_URL: 'gopher://u:hunter2-pw@h' })
    expect(fromEnv.code).toBe(2)
    expect(fromEnv.stderr).toContain('unsupported broker "gopher://u:***@h"')
  })

  // A flag is never a separate value (`--db --broker` is a missing value), and the help flag
  // asks for the usage wherever it stands, as in every command (wantsHelp): `--topic-prefix -h`
  // prints the usage. A prefix that is literally -h is given as `--topic-prefix=-h`.
  it.each([[['--topic-prefix', '-h']], [['--topic-prefix', '--help']], [['--db', '-h']]])(
    '%j prints the usage, exit 0',
    async (args) => {
      const result = await run(args)
      expect(result.code).toBe(0)
      expect(result.stdout).toContain('usage: breakwater relay')
    },
  )

  it('takes -h as the value of --topic-prefix=-h', async () => {
    const result = await run(['--topic-prefix=-h', '--batch-size', '0'])
    expect(result.code).toBe(2)
    expect(result.stderr).toContain('--batch-size must be an integer')
  })

  it('prints its usage for --help and exits 0', async () => {
    const result = await run(['--help'])
    expect(result.code).toBe(0)
    expect(result.stdout).toContain('usage: breakwater relay')
    expect(result.stdout).toContain('sql:                       the SQL queue in the --db database')
  })
})

describe('breakwater relay: startup failures exit 1', () => {
  it('a missing database file: a JSON error line and a hint, and no file created', async () => {
    const file = createTestSqlite('relay-missing')
    try {
      const result = await run(['--db', file.url])
      expect(result.code).toBe(1)
      expect(result.stderr).toContain('no such database file')
      expect(result.stderr).toContain(`run \`breakwater migrate --db ${file.url}\` first`)
      const lines = result.stdout
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l) as Record<string, unknown>)
      expect(lines.at(-1)).toMatchObject({ level: 'error', service: 'breakwater-relay' })
      expect(String(lines.at(-1)!.msg)).toContain('no such database file')
      expect(existsSync(file.filename)).toBe(false)
    } finally {
      file.cleanup()
    }
  })

  it('a breakwater database without the outbox migrations: a hint', async () => {
    const file = createTestSqlite('relay-unmigrated')
    try {
      const db = await openDatabase(file.url)
      await migrateIdempotency(db)
      await db.close()
      const result = await run(['--db', file.url])
      expect(result.code).toBe(1)
      expect(result.stderr).toContain('lacks the outbox migrations')
      expect(result.stderr).toContain(`run \`breakwater migrate --db ${file.url}\` first`)
    } finally {
      file.cleanup()
    }
  })

  // A relay of an older breakwater started on a database a newer one migrated: it would write
  // and read outbox rows by a schema it was not written for. It refuses to start, naming the
  // versions, and leaves the database as it was.
  it.each(['sqlite', 'postgres'] as const)(
    'on %s, a database a newer breakwater migrated: refused with SCHEMA_TOO_NEW, untouched',
    async (dialect) => {
      const sqlite = dialect === 'sqlite' ? createTestSqlite('relay-newer') : undefined
      const database = dialect === 'postgres' ? await createTestDatabase('relay_newer') : undefined
      const url = sqlite?.url ?? database!.url
      try {
        const db = await openDatabase(url)
        await migrateOutbox(db)
        await migrateSqlQueue(db)
        const known = Math.max(...outboxMigrations.map((m) => m.version))
        await db.execute(
          'INSERT INTO breakwater_migrations (capability, version, name, applied_at) VALUES ($1, $2, $3, $4)',
          ['outbox', known + 1, 'from-a-newer-release', 0],
        )
        const before = await listAppliedMigrations(db)
        const result = await run(['--db', url, '--broker', 'sql:'])
        expect(result.code).toBe(1)
        expect(result.stderr).toContain(
          `The database's outbox schema is at version ${known + 1}, but this breakwater knows outbox migrations only up to version ${known}`,
        )
        expect(result.stderr).toContain('Upgrade breakwater')
        expect(result.stderr).toContain('SCHEMA_TOO_NEW')
        expect(result.stdout).not.toContain('relay started')
        expect(await listAppliedMigrations(db)).toEqual(before)
        await db.close()
      } finally {
        sqlite?.cleanup()
        await database?.drop()
      }
    },
  )

  it('a SQL queue broker that does not answer is named as the --broker', async () => {
    const file = createTestSqlite('relay-broker')
    try {
      const db = await openDatabase(file.url)
      await migrateOutbox(db)
      await db.close()
      const result = await run([
        '--db',
        file.url,
        '--broker',
        'postgres://q:hunter2-pw@127.0.0.1:1/q',
      ])
      expect(result.code).toBe(1)
      expect(result.stderr).toContain('cannot open --broker postgres://q:***@127.0.0.1:1/q')
      expect(result.all).not.toContain('hunter2')
    } finally {
      file.cleanup()
    }
  })

  it('an unreachable PostgreSQL: its password never appears', async () => {
    const result = await run(['--db', 'postgres://app:hunter2-pw@127.0.0.1:1/app'])
    expect(result.code).toBe(1)
    expect(result.all).toContain('postgres://app:***@127.0.0.1:1/app')
    expect(result.all).not.toContain('hunter2')
  })
})

describe('breakwater relay: a --broker its adapter refuses', () => {
  // The scheme and host are checked while the arguments are read; the rest of the URL by the
  // broker's adapter when the relay builds it. Both are the user's to fix: exit 2, naming
  // where the URL came from (not the adapter's option name alone), without its password.
  const cases: Array<[string[], Record<string, string>, string]> = [
    [
      ['--broker', 'redis://u:hunter2-pw@127.0.0.1:1/abc'],
      {},
      '--broker: redis.url: expected a redis:// or rediss:// URL',
    ],
    // A port the driver cannot connect to was retried for ever (?port=99999) or read as the
    // default (amqplib connects to 5672 for port 0).
    [
      ['--broker', 'redis://127.0.0.1/?port=99999'],
      {},
      '--broker: redis.url: expected a redis:// or rediss:// URL whose query parameter "port" is a port number from 1 to 65535',
    ],
    [
      ['--broker', 'amqp://u:hunter2-pw@127.0.0.1:0'],
      {},
      '--broker: rabbitmq.url: expected an amqp:// or amqps:// URL whose port is from 1 to 65535',
    ],
    [
      ['--broker', 'http://127.0.0.1:1/hook#part', '--webhook-secret-env', 'HOOK'],
      { HOOK: 'a-webhook-secret-long-enough' },
      '--broker: webhook.url: expected a URL without a fragment',
    ],
    [
      [],
      { BREAKWATER_BROKER_URL: 'https://u:hunter2-pw@127.0.0.1:1/hook', HOOK: 'x'.repeat(16) },
      'BREAKWATER_BROKER_URL: webhook.url: expected a URL without credentials',
    ],
  ]
  for (const [args, env, message] of cases) {
    it(`${JSON.stringify(args)} ${JSON.stringify(env)}`, async () => {
      const file = createTestSqlite('relay-broker-url')
      try {
        const db = await openDatabase(file.url)
        await migrateOutbox(db)
        await db.close()
        const result = await run(['--db', file.url, ...args], {
          BREAKWATER_WEBHOOK_SECRET: 'x'.repeat(16),
          ...env,
        })
        expect(result.stderr).toContain(`breakwater relay: ${message}`)
        expect(result.code).toBe(2)
        expect(result.all).not.toContain('hunter2')
      } finally {
        file.cleanup()
      }
    })
  }
})
