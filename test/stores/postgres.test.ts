import pg from 'pg'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { InvalidOptionError } from '../../src/core/errors.js'
import { createPostgresDriver, notify, type PostgresDriver } from '../../src/stores/postgres.js'
import type { SqlNotification } from '../../src/stores/types.js'
import { gate } from '../support/gate.js'
import { createTestDatabase, type TestDatabase } from '../support/postgres.js'
import { until } from '../support/until.js'
import { uniqueTable } from './drivers.js'

describe('PostgreSQL driver', () => {
  let database: TestDatabase
  let db: PostgresDriver

  beforeAll(async () => {
    database = await createTestDatabase('postgres-driver')
    db = await createPostgresDriver({ connectionString: database.url })
  })
  afterAll(async () => {
    await db?.close()
    await database?.drop()
  })

  it('returns BIGINT as numbers without touching pg’s global type parsers', async () => {
    expect(
      await db.query('SELECT 9007199254740991::bigint AS big, ARRAY[1, 2]::bigint[] AS arr'),
    ).toEqual([{ big: Number.MAX_SAFE_INTEGER, arr: [1, 2] }])
    const plain = new pg.Client({ connectionString: database.url })
    await plain.connect()
    try {
      const result = await plain.query('SELECT 5::bigint AS big')
      expect(result.rows).toEqual([{ big: '5' }])
    } finally {
      await plain.end()
    }
  })

  it('prepares a parameterized statement once per connection', async () => {
    const solo = await createPostgresDriver({ connectionString: database.url, maxConnections: 1 })
    try {
      const sql = 'SELECT $1::int + 1 AS v'
      for (let i = 0; i < 3; i++) expect(await solo.query(sql, [i])).toEqual([{ v: i + 1 }])
      const prepared = await solo.query<{ statement: string }>(
        'SELECT statement FROM pg_prepared_statements WHERE name LIKE $1',
        ['bw\\_%'],
      )
      expect(prepared.filter((row) => row.statement === sql)).toHaveLength(1)
    } finally {
      await solo.close()
    }
  })

  it('applies the statement timeout', async () => {
    const strict = await createPostgresDriver({
      connectionString: database.url,
      statementTimeoutMs: 100,
    })
    try {
      const error = await strict.query('SELECT pg_sleep(5)').catch((e) => e)
      expect(error).toMatchObject({ code: '57014' })
      expect(await strict.query('SELECT 1 AS one')).toEqual([{ one: 1 }])
    } finally {
      await strict.close()
    }
  })

  it('surfaces a COMMIT failure as is and leaves nothing behind', async () => {
    const t = uniqueTable()
    await db.execute(
      `CREATE TABLE ${t} (id INTEGER PRIMARY KEY, k INTEGER UNIQUE DEFERRABLE INITIALLY DEFERRED)`,
    )
    const error = await db
      .transaction(async (tx) => {
        await tx.execute(`INSERT INTO ${t} (id, k) VALUES (1, 7), (2, 7)`)
        return 'fn resolved'
      })
      .catch((e) => e)
    expect(error).toMatchObject({ code: '23505' })
    expect(await db.query(`SELECT id FROM ${t}`)).toEqual([])
  })

  it('returns the connection to the pool after a rollback (one-connection pool keeps working)', async () => {
    const solo = await createPostgresDriver({ connectionString: database.url, maxConnections: 1 })
    try {
      for (let i = 0; i < 3; i++) {
        await expect(
          solo.transaction(async (tx) => {
            await tx.query('SELECT 1')
            throw new Error(`failure ${i}`)
          }),
        ).rejects.toThrow(`failure ${i}`)
      }
      expect(await solo.transaction(async (tx) => tx.query('SELECT 2 AS two'))).toEqual([
        { two: 2 },
      ])
      // A transaction that failed on the server (aborted state) is rolled back too.
      await expect(
        solo.transaction(async (tx) => {
          await tx.query('SELECT 1/0')
        }),
      ).rejects.toThrow(/division by zero/)
      expect(await solo.query('SELECT 3 AS three')).toEqual([{ three: 3 }])
    } finally {
      await solo.close()
    }
  })

  it('finish() on a connection that died fails, and the pool replaces the connection', async () => {
    const solo = await createPostgresDriver({ connectionString: database.url, maxConnections: 1 })
    const t = uniqueTable()
    await db.execute(`CREATE TABLE ${t} (id INTEGER PRIMARY KEY)`)

    try {
      const error = await solo
        .transaction(async (tx) => {
          await tx.execute(`INSERT INTO ${t} (id) VALUES (1)`)
          const [row] = await tx.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')
          await db.query('SELECT pg_terminate_backend($1)', [row!.pid])
          // Let the termination reach the idle connection before its next statement: without
          // the driver's listener that is an unhandled 'error' event, fatal to the process.
          await until(async () => {
            const [left] = await db.query<{ n: number }>(
              'SELECT count(*)::int AS n FROM pg_stat_activity WHERE pid = $1',
              [row!.pid],
            )
            return left!.n === 0
          }, 'the backend to exit')
          await new Promise((resolve) => setTimeout(resolve, 20))
          await tx.finish!(`INSERT INTO ${t} (id) VALUES (2)`)
        })
        .catch((e: unknown) => e)
      expect(error).toBeInstanceOf(Error)
      expect(await db.query(`SELECT id FROM ${t}`)).toEqual([])
      // The one connection was destroyed, not returned: a new one serves the next transaction.
      await solo.transaction((tx) => tx.finish!(`INSERT INTO ${t} (id) VALUES (3)`))
      expect(await db.query(`SELECT id FROM ${t}`)).toEqual([{ id: 3 }])
    } finally {
      await solo.close()
    }
  })

  it('a failed statement swallowed in a one-connection pool leaves the connection usable', async () => {
    const solo = await createPostgresDriver({ connectionString: database.url, maxConnections: 1 })
    try {
      for (let i = 0; i < 2; i++) {
        const error = await solo
          .transaction(async (tx) => {
            await tx.query('SELECT 1/0').catch(() => {})
          })
          .catch((e: unknown) => e)
        expect(error).toMatchObject({ code: 'TRANSACTION_MISUSE' })
      }
      expect(await solo.query('SELECT 4 AS four')).toEqual([{ four: 4 }])
    } finally {
      await solo.close()
    }
  })

  // Statements are prepared once per connection; a schema change from elsewhere (a `breakwater
  // migrate` run while workers are up adds a column) makes PostgreSQL refuse a prepared
  // `SELECT *` or `RETURNING *` with "cached plan must not change result type" (0A000) on that
  // connection for as long as it lives. Inside a transaction the failed connection went back to
  // the pool, so every later transaction on it failed the same way.
  it('a statement whose prepared plan a schema change outdated fails once, not on every later transaction', async () => {
    const table = uniqueTable('plan')
    await db.execute(`CREATE TABLE ${table} (id INT PRIMARY KEY)`)
    await db.execute(`INSERT INTO ${table} (id) VALUES (1)`)
    const solo = await createPostgresDriver({ connectionString: database.url, maxConnections: 1 })
    const sql = `SELECT * FROM ${table} WHERE id = $1`
    const read = () => solo.transaction((tx) => tx.query(sql, [1]))
    const finished = () =>
      solo.transaction(async (tx) => (await tx.finish!(sql, [1])).rows as unknown[])
    try {
      for (const run of [read, finished]) {
        expect(await run()).toHaveLength(1)
        await db.execute(`ALTER TABLE ${table} ADD COLUMN ${run === read ? 'a' : 'b'} INT`)
        const outdated = await run().catch((e) => e)
        expect(outdated).toMatchObject({ code: '0A000' })
        expect(await run()).toHaveLength(1)
      }
      // Outside a transaction the connection of a failed statement is dropped already.
      expect(await solo.query(sql, [1])).toHaveLength(1)
      await db.execute(`ALTER TABLE ${table} ADD COLUMN c INT`)
      expect(await solo.query(sql, [1]).catch((e) => e)).toMatchObject({ code: '0A000' })
      expect(await solo.query(sql, [1])).toHaveLength(1)
    } finally {
      await solo.close()
      await db.execute(`DROP TABLE ${table}`)
    }
  })

  it('validates its options without printing the password', async () => {
    await expect(
      createPostgresDriver({ connectionString: 'postgres://u:pw@h/db', maxConnections: 0 }),
    ).rejects.toThrow(new InvalidOptionError('maxConnections', 'an integer >= 1', 0))
    // Timeouts are 32-bit on both sides: pg's timers fired after 1 ms instead (every connect
    // timed out at once), and PostgreSQL refuses a longer statement_timeout at every connect.
    for (const option of [
      'statementTimeoutMs',
      'idleInTransactionTimeoutMs',
      'connectionTimeoutMs',
      'idleTimeoutMs',
      'queryTimeoutMs',
      'keepAliveDelayMs',
    ]) {
      await expect(
        createPostgresDriver({ connectionString: 'postgres://u:pw@h/db', [option]: 2 ** 31 }),
      ).rejects.toThrow(new InvalidOptionError(option, 'an integer in [0, 2147483647]', 2 ** 31))
    }
    const error = await createPostgresDriver({ connectionString: 'mysql://u:hunter2@h/db' }).catch(
      (e) => e,
    )
    expect(error).toBeInstanceOf(InvalidOptionError)
    expect(String(error.message)).not.toContain('hunter2')
    expect(String(error.message)).toContain('mysql://u:***@h/db')
    // A URL that does not parse is refused here, by name, not at the first statement as pg's
    // bare "Invalid URL".
    const unparsable = await createPostgresDriver({
      connectionString: 'postgres://u:hunter2@h:notaport/db',
    }).catch((e) => e)
    expect(unparsable).toBeInstanceOf(InvalidOptionError)
    expect(String(unparsable.message)).not.toContain('hunter2')
    expect(String(unparsable.message)).toContain('connectionString')
    // Credentials with a Unix socket host given in the query parse for pg: accepted.
    const socket = await createPostgresDriver({
      connectionString: 'postgres://u:pw@/db?host=/var/run/postgresql',
    })
    await socket.close()
  })

  // PostgreSQL cuts a longer channel name to 63 bytes (a NOTICE nobody reads): LISTEN went on
  // the cut name, a NOTIFY of the full name arrived under the cut one, which no handler was
  // kept under, and was dropped without a word.
  it('refuses a channel name PostgreSQL would cut or cannot take, and takes one of 63 bytes', async () => {
    for (const channel of ['', 'c'.repeat(64), `${'é'.repeat(31)}ab`, 5 as unknown as string]) {
      const error = await db.listen(channel, () => {}).catch((e) => e)
      expect(error).toBeInstanceOf(InvalidOptionError)
      expect(error.option).toBe('channel')
    }
    const longest = `${'é'.repeat(31)}a`
    expect(Buffer.byteLength(longest)).toBe(63)
    const received: SqlNotification[] = []
    const unlisten = await db.listen(longest, (n) => received.push(n))
    try {
      await db.execute(`NOTIFY "${longest}", 'sql'`)
      await until(() => received.length >= 1, 'the notification', 10_000)
      expect(received).toEqual([{ channel: longest, payload: 'sql', reconnected: false }])
    } finally {
      await unlisten()
    }
  })

  it('delivers notifications sent in a transaction on commit only, and stops after unlisten', async () => {
    const received: SqlNotification[] = []
    const unlisten = await db.listen('orders_changed', (n) => received.push(n))
    const other: SqlNotification[] = []
    const unlistenOther = await db.listen('Other Channel', (n) => other.push(n))
    await db
      .transaction(async (tx) => {
        await notify(tx, 'orders_changed', 'rolled back')
        throw new Error('abort')
      })
      .catch(() => {})
    await db.transaction(async (tx) => {
      await notify(tx, 'orders_changed', 'first')
      await notify(tx, 'Other Channel', 'case and spaces kept')
    })
    await notify(db, 'orders_changed', 'second')
    await until(() => received.length >= 2 && other.length >= 1, 'two notifications', 10_000)
    expect(received).toEqual([
      { channel: 'orders_changed', payload: 'first', reconnected: false },
      { channel: 'orders_changed', payload: 'second', reconnected: false },
    ])
    expect(other).toEqual([
      { channel: 'Other Channel', payload: 'case and spaces kept', reconnected: false },
    ])
    await unlisten()
    await notify(db, 'orders_changed', 'after unlisten')
    await notify(db, 'Other Channel', 'marker')
    await until(() => other.length >= 2, 'the marker', 10_000)
    expect(received).toHaveLength(2)
    await unlistenOther()
  })

  it('close() lets the running transaction finish and refuses the work still waiting for a connection', async () => {
    const t = uniqueTable()
    await db.execute(`CREATE TABLE ${t} (id INTEGER PRIMARY KEY)`)
    // No connect timeout: work queued behind the only connection waited for ever once the pool
    // was ending (pg-pool serves no waiter then).
    const solo = await createPostgresDriver({
      connectionString: database.url,
      maxConnections: 1,
      connectionTimeoutMs: 0,
    })
    const holding = gate()
    const proceed = gate()
    const running = solo.transaction(async (tx) => {
      await tx.execute(`INSERT INTO ${t} (id) VALUES (1)`)
      holding.open()
      await proceed.promise
      await tx.execute(`INSERT INTO ${t} (id) VALUES (2)`)
      return 'committed'
    })
    await holding.promise
    const outcomes: unknown[] = []
    const waiting = [
      solo.transaction((tx) => tx.execute(`INSERT INTO ${t} (id) VALUES (3)`)),
      solo.execute(`INSERT INTO ${t} (id) VALUES (4)`),
      solo.query('SELECT 1 AS one'),
    ].map((work, i) =>
      work.then(
        () => {
          outcomes[i] = 'ran'
        },
        (error) => {
          outcomes[i] = error.code
        },
      ),
    )
    const closed = solo.close()
    proceed.open()
    await expect(running).resolves.toBe('committed')
    await closed
    await new Promise<void>((resolve) => setImmediate(resolve))
    expect(outcomes).toEqual(['STORE_CLOSED', 'STORE_CLOSED', 'STORE_CLOSED'])
    await Promise.all(waiting)
    expect(await db.query(`SELECT id FROM ${t} ORDER BY id`)).toEqual([{ id: 1 }, { id: 2 }])
  })

  it('close() resolves only after every pooled connection has closed', async () => {
    // pg-pool's end() sends each connection its Terminate and resolves without waiting for the
    // sockets to close, so sessions used to outlive close() (1-2 of 2 in most cycles).
    const leftOver: number[] = []
    for (let cycle = 0; cycle < 10; cycle++) {
      const applicationName = `bw-close-test-${cycle}`
      const own = await createPostgresDriver({
        connectionString: database.url,
        applicationName,
        maxConnections: 2,
      })
      await Promise.all([own.query('SELECT pg_sleep(0.01)'), own.query('SELECT pg_sleep(0.01)')])
      await own.close()
      const [row] = await db.query<{ n: number }>(
        'SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = $1',
        [applicationName],
      )
      leftOver.push(row!.n)
    }
    expect(leftOver).toEqual(Array(10).fill(0))
  })

  it('listen() resolves only once the channel is listened to, also for the second of two concurrent calls', async () => {
    const own = await createPostgresDriver({ connectionString: database.url })
    try {
      const order: string[] = []
      const received: string[] = []
      // The second call found the channel already registered by the first and resolved at
      // once, before the first one's LISTEN was answered: a notification sent right after it
      // resolved could be missed.
      const first = own.listen('concurrent_listen', () => received.push('first'))
      const second = own.listen('concurrent_listen', () => received.push('second'))
      const [unlistenFirst, unlistenSecond] = await Promise.all([
        first.then((u) => {
          order.push('first')
          return u
        }),
        second.then((u) => {
          order.push('second')
          return u
        }),
      ])
      expect(order).toEqual(['first', 'second'])
      await notify(db, 'concurrent_listen', 'x')
      await until(() => received.length >= 2, 'both handlers', 10_000)
      await unlistenFirst()
      await unlistenSecond()
    } finally {
      await own.close()
    }
  })

  it('re-establishes LISTEN after its connection is killed and says so', async () => {
    const own = await createPostgresDriver({
      connectionString: database.url,
      applicationName: 'bw-listen-test',
    })
    try {
      const received: SqlNotification[] = []
      await own.listen('jobs', (n) => received.push(n))
      const killed = await db.query<{ killed: boolean }>(
        "SELECT pg_terminate_backend(pid) AS killed FROM pg_stat_activity WHERE application_name = 'bw-listen-test:listen'",
      )
      expect(killed).toEqual([{ killed: true }])
      await until(() => received.some((n) => n.reconnected), 'the reconnected notification', 10_000)
      expect(received[0]).toEqual({ channel: 'jobs', payload: '', reconnected: true })
      await notify(db, 'jobs', 'after reconnect')
      await until(() => received.some((n) => n.payload === 'after reconnect'), 'delivery', 10_000)
    } finally {
      await own.close()
    }
  })
})
