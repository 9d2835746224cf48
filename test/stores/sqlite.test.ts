import { existsSync, symlinkSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import fc from 'fast-check'
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest'
import { BreakwaterError, InvalidOptionError } from '../../src/core/errors.js'
import { sqlErrorKind } from '../../src/stores/errors.js'
import { notify } from '../../src/stores/postgres.js'
import { createSqliteDriver, type SqliteDriver } from '../../src/stores/sqlite.js'
import type { SqlDriver, SqlExecutor } from '../../src/stores/types.js'
import { gate } from '../support/gate.js'
import { createTestSqlite, type TestSqlite } from '../support/sqlite.js'
import { uniqueTable } from './drivers.js'

describe('SQLite driver', () => {
  let file: TestSqlite
  let db: SqliteDriver

  beforeAll(async () => {
    file = createTestSqlite('sqlite-driver')
    db = await createSqliteDriver({ filename: file.filename })
  })
  afterAll(async () => {
    await db?.close()
    file?.cleanup()
  })

  it('opens in WAL mode with the busy timeout, NORMAL sync and foreign keys', async () => {
    expect(await db.query('PRAGMA journal_mode')).toEqual([{ journal_mode: 'wal' }])
    expect(await db.query('PRAGMA busy_timeout')).toEqual([{ timeout: 5000 }])
    expect(await db.query('PRAGMA synchronous')).toEqual([{ synchronous: 1 }])
    expect(await db.query('PRAGMA foreign_keys')).toEqual([{ foreign_keys: 1 }])
  })

  it("honours synchronous: 'full' and a custom busy timeout, and creates the folder", async () => {
    const other = createTestSqlite('full')
    const filename = join(other.filename, '..', 'nested', 'deeper', 'full.db')
    const full = await createSqliteDriver({ filename, synchronous: 'full', busyTimeoutMs: 250 })
    try {
      expect(existsSync(filename)).toBe(true)
      expect(await full.query('PRAGMA synchronous')).toEqual([{ synchronous: 2 }])
      expect(await full.query('PRAGMA busy_timeout')).toEqual([{ timeout: 250 }])
    } finally {
      await full.close()
      other.cleanup()
    }
  })

  it('validates its options, naming the option and value', async () => {
    await expect(createSqliteDriver({ busyTimeoutMs: -1 })).rejects.toThrow(
      new InvalidOptionError('busyTimeoutMs', 'an integer in [0, 2147483647]', -1),
    )
    // SQLite's busy_timeout is a 32-bit int: a longer one became 0 (no wait at all), and the
    // wait for another driver of the file gave up after 1 ms (node's timer overflows too).
    await expect(
      createSqliteDriver({ busyTimeoutMs: 3_000_000_000, filename: ':memory:' }),
    ).rejects.toThrow(
      new InvalidOptionError('busyTimeoutMs', 'an integer in [0, 2147483647]', 3_000_000_000),
    )
    const longest = await createSqliteDriver({ busyTimeoutMs: 2_147_483_647, filename: ':memory:' })
    expect(await longest.query('PRAGMA busy_timeout')).toEqual([{ timeout: 2_147_483_647 }])
    await longest.close()
    await expect(
      createSqliteDriver({ synchronous: 'off' as 'full', filename: ':memory:' }),
    ).rejects.toThrow(/synchronous: expected one of "normal", "full", got "off"/)
    await expect(createSqliteDriver({ filename: '' })).rejects.toThrow(/filename/)
  })

  // A path whose folder part is a file said "EEXIST: file already exists, mkdir", and a folder
  // given as the database said "unable to open database file": neither named what was wrong.
  it('refuses a folder as the file, and a file as a folder, naming the path', async () => {
    const own = createTestSqlite('paths')
    try {
      const folder = join(own.filename, '..')
      await expect(createSqliteDriver({ filename: folder })).rejects.toThrow(
        new InvalidOptionError('filename', 'a file, not a folder', folder),
      )
      writeFileSync(own.filename, '')
      const under = join(own.filename, 'x.db')
      await expect(createSqliteDriver({ filename: under })).rejects.toThrow(
        new InvalidOptionError(
          'filename',
          `a path whose folders are folders (${own.filename} is a file)`,
          under,
        ),
      )
      const deeper = join(own.filename, 'a', 'b', 'x.db')
      await expect(createSqliteDriver({ filename: deeper })).rejects.toThrow(
        `(${own.filename} is a file)`,
      )
    } finally {
      own.cleanup()
    }
  })

  it('rejects ? placeholders: statements are written with $n', async () => {
    const error = await db.query('SELECT ? AS v', [1]).catch((e) => e)
    expect(error).toBeInstanceOf(InvalidOptionError)
  })

  it('fails fast instead of deadlocking when the driver is used inside its own transaction', async () => {
    const t = uniqueTable()
    await db.execute(`CREATE TABLE ${t} (id INTEGER PRIMARY KEY)`)
    const inner = await db
      .transaction(async (tx) => {
        await tx.execute(`INSERT INTO ${t} (id) VALUES (1)`)
        await db.query(`SELECT * FROM ${t}`)
      })
      .catch((e) => e)
    expect(BreakwaterError.is(inner) && inner.code).toBe('TRANSACTION_MISUSE')
    const nested = await db.transaction(async () => db.transaction(async () => 1)).catch((e) => e)
    expect(BreakwaterError.is(nested) && nested.code).toBe('TRANSACTION_MISUSE')
    expect(await db.query(`SELECT id FROM ${t}`)).toEqual([])
  })

  it('refuses the outer transaction once a savepoint statement rolled back the whole of it', async () => {
    const t = uniqueTable()
    await db.execute(`CREATE TABLE ${t} (id INTEGER PRIMARY KEY)`)
    await db.execute(`INSERT INTO ${t} (id) VALUES (1)`)
    let late: unknown
    const outcome = await db
      .transaction(async (tx) => {
        await tx.execute(`INSERT INTO ${t} (id) VALUES (2)`)
        // OR ROLLBACK ends the whole transaction, savepoint and all: the caller's catch cannot
        // bring the outer transaction back, and its next write must not commit on its own.
        await tx
          .transaction((inner) => inner.execute(`INSERT OR ROLLBACK INTO ${t} (id) VALUES (1)`))
          .catch(() => {})
        late = await tx.execute(`INSERT INTO ${t} (id) VALUES (3)`).catch((e) => e)
        // A new savepoint would begin a transaction of its own, outside the driver's lock.
        late = [late, await tx.transaction(async () => 1).catch((e) => e)]
      })
      .catch((e) => e)
    expect(BreakwaterError.is(outcome) && outcome.code).toBe('TRANSACTION_MISUSE')
    expect((late as unknown[]).map((e) => BreakwaterError.is(e) && e.code)).toEqual([
      'TRANSACTION_MISUSE',
      'TRANSACTION_MISUSE',
    ])
    expect(await db.query(`SELECT id FROM ${t}`)).toEqual([{ id: 1 }])
    // The driver is fine afterwards.
    await db.transaction((tx) => tx.execute(`INSERT INTO ${t} (id) VALUES (4)`))
    expect(await db.query(`SELECT id FROM ${t} ORDER BY id`)).toEqual([{ id: 1 }, { id: 4 }])
  })

  it('still lets work started inside a transaction use the driver once the transaction ended', async () => {
    let later: Promise<unknown> | undefined
    await db.transaction(async () => {
      later = Promise.resolve().then(async () => {
        await new Promise<void>((resolve) => setImmediate(resolve))
        return db.query('SELECT 1 AS one')
      })
    })
    await expect(later).resolves.toEqual([{ one: 1 }])
  })

  it('notify is a no-op on SQLite', async () => {
    await expect(notify(db, 'channel', 'payload')).resolves.toBeUndefined()
    expect((db as SqlDriver).listen).toBeUndefined()
  })

  // The log records each statement in the order SQLite executed it (AUTOINCREMENT ids). A
  // transaction's statements must form one unbroken run: nothing else of this driver ran while
  // it was open.
  function interleavings(rows: { actor: string }[]): string[] {
    const problems: string[] = []
    const finished = new Set<string>()
    let current: string | undefined
    for (const { actor } of rows) {
      if (actor !== current) {
        if (current?.startsWith('tx')) finished.add(current)
        if (finished.has(actor)) problems.push(`${actor} resumed after another statement ran`)
        current = actor
      }
    }
    return problems
  }

  it('the interleaving check catches statements that interleave (it can fail)', () => {
    const rows = ['tx0', 'tx1', 'tx0'].map((actor) => ({ actor }))
    expect(interleavings(rows)).toEqual(['tx0 resumed after another statement ran'])
    expect(interleavings(['tx0', 'tx0', 'out', 'tx1'].map((actor) => ({ actor })))).toEqual([])
  })

  it('serializes concurrent transactions and plain statements under any interleaving', async () => {
    const t = uniqueTable('log')
    const c = uniqueTable('counter')
    await db.execute(
      `CREATE TABLE ${t} (seq INTEGER PRIMARY KEY AUTOINCREMENT, actor TEXT NOT NULL, step INTEGER NOT NULL)`,
    )
    await db.execute(`CREATE TABLE ${c} (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)`)
    await fc.assert(
      fc.asyncProperty(
        fc.scheduler(),
        fc.integer({ min: 1, max: 4 }),
        fc.integer({ min: 0, max: 4 }),
        fc.integer({ min: 1, max: 3 }),
        async (s, transactions, outside, steps) => {
          await db.execute(`DELETE FROM ${t}`)
          await db.execute(`DELETE FROM ${c}`)
          await db.execute(`INSERT INTO ${c} (id, n) VALUES (1, 0)`)
          const log = (executor: SqlExecutor, actor: string, step: number) =>
            executor.execute(`INSERT INTO ${t} (actor, step) VALUES ($1, $2)`, [actor, step])
          const work: Promise<unknown>[] = []
          for (let i = 0; i < transactions; i++) {
            const actor = `tx${i}`
            work.push(
              s.schedule(Promise.resolve(), `start ${actor}`).then(() =>
                db.transaction(async (tx) => {
                  // A read-modify-write across awaits: a lost update if anything interleaved.
                  const [row] = await tx.query<{ n: number }>(`SELECT n FROM ${c} WHERE id = 1`)
                  for (let step = 0; step < steps; step++) {
                    await s.schedule(Promise.resolve(), `${actor} step ${step}`)
                    await log(tx, actor, step)
                  }
                  await tx.execute(`UPDATE ${c} SET n = $1 WHERE id = 1`, [row!.n + 1])
                }),
              ),
            )
          }
          for (let i = 0; i < outside; i++) {
            work.push(
              s.schedule(Promise.resolve(), `outside ${i}`).then(() => log(db, `out${i}`, 0)),
            )
          }
          await s.waitFor(Promise.all(work))
          const rows = await db.query<{ actor: string }>(`SELECT actor FROM ${t} ORDER BY seq`)
          expect(interleavings(rows)).toEqual([])
          expect(rows).toHaveLength(transactions * steps + outside)
          expect(await db.query(`SELECT n FROM ${c}`)).toEqual([{ n: transactions }])
        },
      ),
      { numRuns: 150 },
    )
  })

  it('keeps plain statements in FIFO order behind a transaction', async () => {
    const t = uniqueTable()
    await db.execute(`CREATE TABLE ${t} (seq INTEGER PRIMARY KEY AUTOINCREMENT, v TEXT)`)
    let release!: () => void
    const gate = new Promise<void>((resolve) => {
      release = resolve
    })
    const txDone = db.transaction(async (tx) => {
      await tx.execute(`INSERT INTO ${t} (v) VALUES ('tx-1')`)
      await gate
      await tx.execute(`INSERT INTO ${t} (v) VALUES ('tx-2')`)
    })
    const queued = [
      db.execute(`INSERT INTO ${t} (v) VALUES ('a')`),
      db.execute(`INSERT INTO ${t} (v) VALUES ('b')`),
    ]
    await new Promise<void>((resolve) => setImmediate(resolve))
    release()
    await Promise.all([txDone, ...queued])
    expect(
      (await db.query<{ v: string }>(`SELECT v FROM ${t} ORDER BY seq`)).map((r) => r.v),
    ).toEqual(['tx-1', 'tx-2', 'a', 'b'])
  })

  it('close waits for the open transaction to finish', async () => {
    const own = createTestSqlite('close-wait')
    const driver = await createSqliteDriver({ filename: own.filename })
    await driver.execute('CREATE TABLE t (id INTEGER PRIMARY KEY)')
    let release!: () => void
    const gate = new Promise<void>((resolve) => {
      release = resolve
    })
    const tx = driver.transaction(async (t) => {
      await gate
      await t.execute('INSERT INTO t (id) VALUES (1)')
    })
    const closed = driver.close()
    release()
    await tx
    await closed
    const reopened = await createSqliteDriver({ filename: own.filename })
    expect(await reopened.query('SELECT id FROM t')).toEqual([{ id: 1 }])
    await reopened.close()
    own.cleanup()
  })

  describe('two drivers of one process on the same file', () => {
    // Before drivers shared a lock per file, the second driver's write ran into SQLite's
    // synchronous busy wait while the first held a transaction across an await: the thread
    // froze for the whole busy timeout (the holder could never run to commit), then the write
    // failed with "database is locked".
    it('queue behind each other instead of freezing the thread, even through a symlink', async () => {
      const own = createTestSqlite('shared-lock')
      const link = join(own.filename, '..', 'link.db')
      symlinkSync(own.filename, link)
      const first = await createSqliteDriver({ filename: own.filename })
      const second = await createSqliteDriver({ filename: link, busyTimeoutMs: 2_000 })
      try {
        await first.execute('CREATE TABLE t (id INTEGER PRIMARY KEY, who TEXT NOT NULL)')
        const held = gate()
        const inside = gate()
        const order: string[] = []
        const tx = first.transaction(async (t) => {
          await t.execute('INSERT INTO t (id, who) VALUES (1, $1)', ['first'])
          inside.open()
          await held.promise
          order.push('first commits')
        })
        await inside.promise
        const write = second
          .execute('INSERT INTO t (id, who) VALUES (2, $1)', ['second'])
          .then(() => order.push('second wrote'))
        const read = second.query<{ n: number }>('SELECT count(*) AS n FROM t')
        // The thread is free: the event loop goes round while the second driver waits (before
        // drivers shared the lock, the write blocked right here in SQLite's busy wait).
        for (let i = 0; i < 5; i++) await new Promise((resolve) => setImmediate(resolve))
        order.push('event loop ran')
        held.open()
        await Promise.all([tx, write])
        expect(order).toEqual(['event loop ran', 'first commits', 'second wrote'])
        expect(await read).toEqual([{ n: 2 }])
        expect(await first.query('SELECT id, who FROM t ORDER BY id')).toEqual([
          { id: 1, who: 'first' },
          { id: 2, who: 'second' },
        ])
      } finally {
        await second.close()
        await first.close()
        own.cleanup()
      }
    })

    it("refuse, by name, a write through the second driver inside the first one's transaction", async () => {
      const own = createTestSqlite('shared-misuse')
      const first = await createSqliteDriver({ filename: own.filename })
      const second = await createSqliteDriver({ filename: own.filename })
      try {
        await first.execute('CREATE TABLE t (id INTEGER PRIMARY KEY)')
        const inside = first.transaction(async (t) => {
          await t.execute('INSERT INTO t (id) VALUES (1)')
          // A read is fine: it sees what was committed before the transaction.
          expect(await second.query('SELECT id FROM t')).toEqual([])
          await second.execute('INSERT INTO t (id) VALUES (3)')
        })
        await expect(inside).rejects.toThrow(
          /second SQLite driver on the same file was asked to write from inside a transaction of the first/,
        )
        // Rolled back, and both drivers still work.
        expect(await second.query('SELECT id FROM t')).toEqual([])
        await second.execute('INSERT INTO t (id) VALUES (2)')
        expect(await first.query('SELECT id FROM t')).toEqual([{ id: 2 }])
      } finally {
        await second.close()
        await first.close()
        own.cleanup()
      }
    })

    it("let a read through the second driver run inside the first one's transaction, even with a write of the second queued", async () => {
      const own = createTestSqlite('shared-read')
      const first = await createSqliteDriver({ filename: own.filename })
      const second = await createSqliteDriver({ filename: own.filename })
      try {
        await first.execute('CREATE TABLE t (id INTEGER PRIMARY KEY)')
        await first.execute('INSERT INTO t (id) VALUES (1)')
        const inside = gate()
        const proceed = gate()
        const tx = first.transaction(async (t) => {
          await t.execute('INSERT INTO t (id) VALUES (2)')
          inside.open()
          await proceed.promise
          // The second driver's queue holds its write, which waits for this transaction: the
          // read must not wait in that queue.
          const read = second.query<{ id: number }>('SELECT id FROM t ORDER BY id')
          const outcome = await Promise.race([
            read,
            new Promise((resolve) => setTimeout(() => resolve('still waiting'), 1_000)),
          ])
          expect(outcome).toEqual([{ id: 1 }])
        })
        await inside.promise
        const write = second.execute('INSERT INTO t (id) VALUES (3)')
        proceed.open()
        await tx
        await write
        expect(await second.query('SELECT id FROM t ORDER BY id')).toEqual([
          { id: 1 },
          { id: 2 },
          { id: 3 },
        ])
      } finally {
        await second.close()
        await first.close()
        own.cleanup()
      }
    })

    it("bound the wait for the other one's transaction by busyTimeoutMs, as SQLite bounds the wait for another process", async () => {
      const own = createTestSqlite('shared-busy')
      const first = await createSqliteDriver({ filename: own.filename })
      const second = await createSqliteDriver({ filename: own.filename, busyTimeoutMs: 200 })
      try {
        await first.execute('CREATE TABLE t (id INTEGER PRIMARY KEY)')
        const inside = gate()
        const release = gate()
        const tx = first.transaction(async (t) => {
          await t.execute('INSERT INTO t (id) VALUES (1)')
          inside.open()
          await release.promise
        })
        await inside.promise
        vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] })
        try {
          const write = second.execute('INSERT INTO t (id) VALUES (2)')
          const failed = expect(write).rejects.toMatchObject({
            code: 'STORE_BUSY',
            retryable: true,
          })
          await vi.advanceTimersByTimeAsync(199)
          const queuedTx = second.transaction((t) => t.execute('INSERT INTO t (id) VALUES (3)'))
          await vi.advanceTimersByTimeAsync(1)
          await failed
          expect(sqlErrorKind(await write.catch((e: unknown) => e))).toBe('busy')
          // The transaction queued later still waits; it gets the lock when the first commits.
          release.open()
          await tx
          await queuedTx
        } finally {
          vi.useRealTimers()
        }
        expect(await second.query('SELECT id FROM t ORDER BY id')).toEqual([{ id: 1 }, { id: 3 }])
      } finally {
        await second.close()
        await first.close()
        own.cleanup()
      }
    })

    it('do not hold up drivers of other files', async () => {
      const a = createTestSqlite('lock-a')
      const b = createTestSqlite('lock-b')
      const onA = await createSqliteDriver({ filename: a.filename })
      const onB = await createSqliteDriver({ filename: b.filename })
      try {
        await onB.execute('CREATE TABLE t (id INTEGER PRIMARY KEY)')
        let wroteOnB = false
        await onA.transaction(async () => {
          await onB.execute('INSERT INTO t (id) VALUES (1)')
          wroteOnB = true
        })
        expect(wroteOnB).toBe(true)
      } finally {
        await onB.close()
        await onA.close()
        a.cleanup()
        b.cleanup()
      }
    })
  })

  it('opens an in-memory database', async () => {
    const memory = await createSqliteDriver({ filename: ':memory:' })
    await memory.execute('CREATE TABLE t (v TEXT)')
    await memory.execute('INSERT INTO t (v) VALUES ($1)', ['x'])
    expect(await memory.query('SELECT v FROM t')).toEqual([{ v: 'x' }])
    await memory.close()
  })
})
