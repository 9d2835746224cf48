// One behaviour for every SqlDriver: each test runs against real SQLite and real PostgreSQL.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { BreakwaterError, InvalidOptionError } from '../../src/core/errors.js'
import { sqlErrorKind } from '../../src/stores/errors.js'
import type { SqlDriver, SqlTransaction } from '../../src/stores/types.js'
import { gate } from '../support/gate.js'
import { type OpenedTarget, targets, uniqueTable } from './drivers.js'

describe.each(targets)('$dialect driver conformance', (target) => {
  let opened: OpenedTarget
  let db: SqlDriver
  const bigint = target.dialect === 'postgres' ? 'BIGINT' : 'INTEGER'
  const bytes = target.dialect === 'postgres' ? 'BYTEA' : 'BLOB'
  const real = target.dialect === 'postgres' ? 'DOUBLE PRECISION' : 'REAL'
  const bool = target.dialect === 'postgres' ? 'BOOLEAN' : 'INTEGER'

  beforeAll(async () => {
    opened = await target.open('conformance')
    db = opened.db
  })
  afterAll(async () => {
    await opened?.cleanup()
  })

  async function table(columns = 'id INTEGER PRIMARY KEY, v TEXT'): Promise<string> {
    const name = uniqueTable()
    await db.execute(`CREATE TABLE ${name} (${columns})`)
    return name
  }

  it('reports its dialect', () => {
    expect(db.dialect).toBe(target.dialect)
  })

  it('round-trips every supported value type', async () => {
    const t = await table(
      `id INTEGER PRIMARY KEY, i INTEGER, big ${bigint}, f ${real}, s TEXT, n TEXT, u TEXT, b ${bool}, bytes ${bytes}, buf ${bytes}, ts ${bigint}`,
    )
    const timestamp = 1_726_000_000_123
    await db.execute(
      `INSERT INTO ${t} (id, i, big, f, s, n, u, b, bytes, buf, ts) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)`,
      [
        1,
        -42,
        2n ** 40n,
        1.5,
        'héllo ✓ \n\t"x"',
        null,
        undefined,
        true,
        new Uint8Array([0, 1, 255]),
        Buffer.from('abc'),
        timestamp,
      ],
    )
    const [row] = await db.query<Record<string, unknown>>(`SELECT * FROM ${t} WHERE id = $1`, [1])
    expect(row).toMatchObject({
      id: 1,
      i: -42,
      big: 2 ** 40,
      f: 1.5,
      s: 'héllo ✓ \n\t"x"',
      n: null,
      u: null,
      ts: timestamp,
    })
    expect(typeof row!.big).toBe('number')
    expect(typeof row!.ts).toBe('number')
    expect(Boolean(row!.b)).toBe(true)
    expect(Buffer.isBuffer(row!.bytes)).toBe(true)
    expect([...(row!.bytes as Buffer)]).toEqual([0, 1, 255])
    expect((row!.buf as Buffer).toString()).toBe('abc')
    // BIGINT results such as count(*) are numbers too.
    const [count] = await db.query<{ n: number }>(`SELECT count(*) AS n FROM ${t}`)
    expect(count).toEqual({ n: 1 })
  })

  it('binds a placeholder used twice and placeholders out of order', async () => {
    const t = await table('id INTEGER PRIMARY KEY, a TEXT, b TEXT')
    await db.execute(`INSERT INTO ${t} (id, b, a) VALUES ($3, $1, $2)`, ['B', 'A', 7])
    await db.execute(`INSERT INTO ${t} (id, a, b) VALUES ($1, $2, $2)`, [8, 'same'])
    expect(await db.query(`SELECT id, a, b FROM ${t} ORDER BY id`)).toEqual([
      { id: 7, a: 'A', b: 'B' },
      { id: 8, a: 'same', b: 'same' },
    ])
    const rows = await db.query(`SELECT id FROM ${t} WHERE a = $1 OR b = $1 ORDER BY id`, ['same'])
    expect(rows).toEqual([{ id: 8 }])
  })

  it('leaves $n inside string literals, quoted identifiers and comments alone', async () => {
    const t = await table('id INTEGER PRIMARY KEY, "weird$1" TEXT')
    await db.execute(
      `INSERT INTO ${t} (id, "weird$1") VALUES ($1, '$2 it''s ? $1') -- trailing $3 comment`,
      [1],
    )
    const rows = await db.query(`SELECT "weird$1" AS v FROM ${t} /* $9 */ WHERE id = $1`, [1])
    expect(rows).toEqual([{ v: "$2 it's ? $1" }])
  })

  it('reports changed rows from execute and RETURNING rows from query', async () => {
    const t = await table()
    expect(
      await db.execute(`INSERT INTO ${t} (id, v) VALUES (1, 'a'), (2, 'b'), (3, 'c')`),
    ).toEqual({ rowCount: 3 })
    expect(await db.execute(`UPDATE ${t} SET v = $1 WHERE id > $2`, ['z', 1])).toEqual({
      rowCount: 2,
    })
    expect(await db.execute(`DELETE FROM ${t} WHERE id = $1`, [99])).toEqual({ rowCount: 0 })
    expect(await db.query(`UPDATE ${t} SET v = 'y' WHERE id = $1`, [1])).toEqual([])
    expect(
      await db.query(`INSERT INTO ${t} (id, v) VALUES ($1, $2) RETURNING id, v`, [4, 'd']),
    ).toEqual([{ id: 4, v: 'd' }])
    expect(await db.query(`SELECT v FROM ${t} WHERE id = $1`, [404])).toEqual([])
  })

  it('commits a transaction when its callback resolves', async () => {
    const t = await table()
    const result = await db.transaction(async (tx) => {
      await tx.execute(`INSERT INTO ${t} (id, v) VALUES ($1, $2)`, [1, 'a'])
      await tx.execute(`INSERT INTO ${t} (id, v) VALUES ($1, $2)`, [2, 'b'])
      return (await tx.query<{ n: number }>(`SELECT count(*) AS n FROM ${t}`))[0]!.n
    })
    expect(result).toBe(2)
    expect(await db.query(`SELECT id FROM ${t} ORDER BY id`)).toEqual([{ id: 1 }, { id: 2 }])
  })

  it('rolls a transaction back when its callback throws, rethrowing the same error', async () => {
    const t = await table()
    const boom = new Error('boom')
    const outcome = db.transaction(async (tx) => {
      await tx.execute(`INSERT INTO ${t} (id, v) VALUES ($1, $2)`, [1, 'a'])
      throw boom
    })
    await expect(outcome).rejects.toBe(boom)
    expect(await db.query(`SELECT id FROM ${t}`)).toEqual([])
  })

  it('rolls back when a statement inside the transaction fails, and stays usable', async () => {
    const t = await table()
    await db.execute(`INSERT INTO ${t} (id, v) VALUES (1, 'a')`)
    const outcome = db.transaction(async (tx) => {
      await tx.execute(`INSERT INTO ${t} (id, v) VALUES (2, 'b')`)
      await tx.execute(`INSERT INTO ${t} (id, v) VALUES (1, 'duplicate')`)
    })
    const error = await outcome.catch((e: unknown) => e)
    expect(sqlErrorKind(error)).toBe('unique-violation')
    expect(await db.query(`SELECT id, v FROM ${t}`)).toEqual([{ id: 1, v: 'a' }])
    await db.transaction(async (tx) => {
      await tx.execute(`INSERT INTO ${t} (id, v) VALUES (3, 'c')`)
    })
    expect(await db.query(`SELECT count(*) AS n FROM ${t}`)).toEqual([{ n: 2 }])
  })

  it('refuses statements through a transaction executor after the transaction ended', async () => {
    const t = await table()
    let leaked: SqlTransaction | undefined
    await db.transaction(async (tx) => {
      leaked = tx
    })
    const error = await leaked!
      .execute(`INSERT INTO ${t} (id, v) VALUES (1, 'late')`)
      .catch((e) => e)
    expect(BreakwaterError.is(error) && error.code).toBe('TRANSACTION_MISUSE')
    expect(await db.query(`SELECT id FROM ${t}`)).toEqual([])
  })

  it('refuses a statement that would end or begin a transaction through tx, and rolls back', async () => {
    const t = await table()
    const ending = [
      'COMMIT',
      'commit transaction',
      'END',
      '  /* why */ -- and this\n ROLLBACK',
      'rollback work',
      'BEGIN',
      'START TRANSACTION',
      // SQLite skips empty statements in front of one.
      '; COMMIT',
      ' ;; /* x */ ROLLBACK',
    ]
    for (const statement of ending) {
      for (const send of [
        (tx: SqlTransaction) => tx.execute(statement),
        (tx: SqlTransaction) => tx.query(statement),
      ]) {
        const error = await db
          .transaction(async (tx) => {
            await tx.execute(`INSERT INTO ${t} (id, v) VALUES (1, 'kept only with the rest')`)
            await send(tx)
            await tx.execute(`INSERT INTO ${t} (id, v) VALUES (2, 'after')`)
          })
          .catch((e) => e)
        expect(BreakwaterError.is(error) && error.code, statement).toBe('TRANSACTION_MISUSE')
        expect((error as Error).message).toMatch(/ends or begins a transaction/)
        expect(await db.query(`SELECT id FROM ${t}`), statement).toEqual([])
      }
    }
    // Savepoints of the user's own stay inside the transaction: they are taken.
    await db.transaction(async (tx) => {
      await tx.execute('SAVEPOINT mine')
      await tx.execute(`INSERT INTO ${t} (id, v) VALUES (3, 'undone')`)
      await tx.execute('ROLLBACK TO SAVEPOINT mine')
      await tx.execute('rollback transaction to mine')
      await tx.execute('RELEASE SAVEPOINT mine')
      await tx.execute(`INSERT INTO ${t} (id, v) VALUES (4, 'kept')`)
    })
    expect(await db.query(`SELECT id FROM ${t}`)).toEqual([{ id: 4 }])
  })

  it('refuses statements through a savepoint executor once the outer transaction ended', async () => {
    const t = await table()
    const inside = gate()
    const proceed = gate()
    let savepoint: Promise<unknown> | undefined
    await expect(
      db.transaction(async (tx) => {
        // Not awaited (or cut short, as idempotency's lease expiry rolls ctx.tx back): the
        // outer transaction ends while the savepoint's callback still runs.
        savepoint = tx.transaction(async (inner) => {
          inside.open()
          await proceed.promise
          await inner.execute(`INSERT INTO ${t} (id, v) VALUES (1, 'after the end')`)
        })
        await inside.promise
        throw new Error('outer fails')
      }),
    ).rejects.toThrow('outer fails')
    proceed.open()
    const error = await savepoint!.catch((e) => e)
    expect(BreakwaterError.is(error) && error.code).toBe('TRANSACTION_MISUSE')
    // The late write ran nowhere: not on its own, nor in a later transaction of the connection.
    await db.transaction(async (tx) => {
      await tx.execute(`INSERT INTO ${t} (id, v) VALUES (2, 'next')`)
    })
    expect(await db.query(`SELECT id FROM ${t} ORDER BY id`)).toEqual([{ id: 2 }])
  })

  it('runs tx.transaction as a savepoint: an inner failure undoes only the inner writes', async () => {
    const t = await table()
    await db.transaction(async (tx) => {
      await tx.execute(`INSERT INTO ${t} (id, v) VALUES (1, 'outer')`)
      await expect(
        tx.transaction(async (inner) => {
          await inner.execute(`INSERT INTO ${t} (id, v) VALUES (2, 'inner')`)
          throw new Error('inner fails')
        }),
      ).rejects.toThrow('inner fails')
      const nested = await tx.transaction(async (inner) => {
        await inner.execute(`INSERT INTO ${t} (id, v) VALUES (3, 'kept')`)
        return inner.transaction(async (deeper) => {
          await deeper.execute(`INSERT INTO ${t} (id, v) VALUES (4, 'deeper')`)
          return 'ok'
        })
      })
      expect(nested).toBe('ok')
    })
    expect(await db.query(`SELECT id FROM ${t} ORDER BY id`)).toEqual([
      { id: 1 },
      { id: 3 },
      { id: 4 },
    ])
  })

  it('refuses a second savepoint of one tx while the first runs, instead of mixing them up', async () => {
    const t = await table()
    const firstWrote = gate()
    const secondBegan = gate()
    let second: unknown
    await db.transaction(async (tx) => {
      const first = tx.transaction(async (inner) => {
        await inner.execute(`INSERT INTO ${t} (id, v) VALUES (1, 'first')`)
        firstWrote.open()
        await secondBegan.promise
        throw new Error('first fails')
      })
      await firstWrote.promise
      // Both would be savepoints of one name: the first's ROLLBACK TO would go back to the
      // second's, keeping the first's write.
      second = await tx
        .transaction((inner) => inner.execute(`INSERT INTO ${t} (id, v) VALUES (2, 'second')`))
        .catch((e) => e)
      secondBegan.open()
      await expect(first).rejects.toThrow('first fails')
    })
    expect(BreakwaterError.is(second) && second.code).toBe('TRANSACTION_MISUSE')
    expect(await db.query(`SELECT id FROM ${t}`)).toEqual([])
  })

  it("refuses the outer tx's statements while one of its savepoints runs, instead of losing them in its rollback", async () => {
    const t = await table()
    const innerWrote = gate()
    const outerTried = gate()
    let outerWrite: unknown
    let outerFinish: unknown
    let outerRead: unknown
    await db.transaction(async (tx) => {
      const savepoint = tx.transaction(async (inner) => {
        await inner.execute(`INSERT INTO ${t} (id, v) VALUES (1, 'inner')`)
        innerWrote.open()
        await outerTried.promise
        throw new Error('inner fails')
      })
      await innerWrote.promise
      // Sent on the same connection, this write would run inside the savepoint and vanish with
      // its ROLLBACK TO, though it was reported done.
      outerWrite = await tx
        .execute(`INSERT INTO ${t} (id, v) VALUES (2, 'outer')`)
        .catch((e: unknown) => e)
      outerRead = await tx.query(`SELECT id FROM ${t}`).catch((e: unknown) => e)
      outerFinish = await tx
        .finish?.(`INSERT INTO ${t} (id, v) VALUES (3, 'finish')`)
        .catch((e: unknown) => e)
      outerTried.open()
      await expect(savepoint).rejects.toThrow('inner fails')
      // Once the savepoint has ended, the outer tx works again.
      await tx.execute(`INSERT INTO ${t} (id, v) VALUES (4, 'after')`)
    })
    for (const error of [outerWrite, outerRead, outerFinish]) {
      expect(BreakwaterError.is(error) && error.code).toBe('TRANSACTION_MISUSE')
      expect((error as Error).message).toMatch(/savepoint/)
    }
    expect(await db.query(`SELECT id FROM ${t} ORDER BY id`)).toEqual([{ id: 4 }])
  })

  it("refuses the outer tx's statements already while a savepoint is being opened", async () => {
    const t = await table()
    await db.transaction(async (tx) => {
      // Started in this order, the outer write would reach the connection after SAVEPOINT.
      const [savepoint, outer] = await Promise.allSettled([
        tx.transaction(() => Promise.reject(new Error('inner fails'))),
        tx.execute(`INSERT INTO ${t} (id, v) VALUES (1, 'outer')`),
      ])
      expect(savepoint.status).toBe('rejected')
      expect(
        outer.status === 'rejected' && BreakwaterError.is(outer.reason) && outer.reason.code,
      ).toBe('TRANSACTION_MISUSE')
    })
    expect(await db.query(`SELECT id FROM ${t}`)).toEqual([])
  })

  it('rolls back savepoint writes together with the outer transaction', async () => {
    const t = await table()
    await expect(
      db.transaction(async (tx) => {
        await tx.transaction(async (inner) => {
          await inner.execute(`INSERT INTO ${t} (id, v) VALUES (1, 'inner')`)
        })
        throw new Error('outer fails')
      }),
    ).rejects.toThrow('outer fails')
    expect(await db.query(`SELECT id FROM ${t}`)).toEqual([])
  })

  it('finish() commits with its statement, returns its rows and count, and ends the transaction', async () => {
    const t = await table()
    let finished: { rows: unknown[]; rowCount: number } | undefined
    let late: unknown
    await db.transaction(async (tx) => {
      await tx.execute(`INSERT INTO ${t} (id, v) VALUES ($1, $2)`, [1, 'a'])
      finished = await tx.finish!(`INSERT INTO ${t} (id, v) VALUES ($1, $2) RETURNING id`, [2, 'b'])
      late = await tx.execute(`INSERT INTO ${t} (id, v) VALUES (3, 'late')`).catch((e) => e)
    })
    expect(finished).toEqual({ rows: [{ id: 2 }], rowCount: 1 })
    expect(BreakwaterError.is(late) && late.code).toBe('TRANSACTION_MISUSE')
    expect(await db.query(`SELECT id FROM ${t} ORDER BY id`)).toEqual([{ id: 1 }, { id: 2 }])
  })

  it('finish() whose statement fails rolls everything back and rejects with its error', async () => {
    const t = await table()
    await db.execute(`INSERT INTO ${t} (id, v) VALUES (1, 'a')`)
    const outcome = db.transaction(async (tx) => {
      await tx.execute(`INSERT INTO ${t} (id, v) VALUES (2, 'b')`)
      await tx.finish!(`INSERT INTO ${t} (id, v) VALUES (1, 'duplicate')`)
    })
    expect(sqlErrorKind(await outcome.catch((e: unknown) => e))).toBe('unique-violation')
    expect(await db.query(`SELECT id, v FROM ${t}`)).toEqual([{ id: 1, v: 'a' }])
    // The connection is fine afterwards (a one-connection pool would hang otherwise).
    await db.transaction((tx) => tx.finish!(`INSERT INTO ${t} (id, v) VALUES (3, 'c')`))
    expect(await db.query(`SELECT count(*) AS n FROM ${t}`)).toEqual([{ n: 2 }])
  })

  it('a callback that swallows a failed finish() still rejects, with nothing committed', async () => {
    const t = await table()
    await db.execute(`INSERT INTO ${t} (id, v) VALUES (1, 'a')`)
    const outcome = db.transaction(async (tx) => {
      await tx.execute(`INSERT INTO ${t} (id, v) VALUES (2, 'b')`)
      await tx.finish!(`INSERT INTO ${t} (id, v) VALUES (1, 'duplicate')`).catch(() => {})
      return 'looks fine'
    })
    expect(sqlErrorKind(await outcome.catch((e: unknown) => e))).toBe('unique-violation')
    expect(await db.query(`SELECT id FROM ${t}`)).toEqual([{ id: 1 }])
  })

  it('an error thrown after a successful finish() reaches the caller; the commit stands', async () => {
    const t = await table()
    const boom = new Error('after finish')
    const outcome = db.transaction(async (tx) => {
      await tx.finish!(`INSERT INTO ${t} (id, v) VALUES (1, 'kept')`)
      throw boom
    })
    await expect(outcome).rejects.toBe(boom)
    expect(await db.query(`SELECT id FROM ${t}`)).toEqual([{ id: 1 }])
  })

  it('offers finish() only on the outermost transaction, not on a savepoint', async () => {
    await db.transaction(async (tx) => {
      expect(typeof tx.finish).toBe('function')
      await tx.transaction(async (inner) => {
        expect(inner.finish).toBeUndefined()
      })
    })
  })

  it.runIf(target.dialect === 'postgres')(
    'rejects, with nothing committed, a callback that swallowed a failed statement and returned',
    async () => {
      const t = await table()
      await db.execute(`INSERT INTO ${t} (id, v) VALUES (1, 'a')`)
      const outcome = db.transaction(async (tx) => {
        await tx.execute(`INSERT INTO ${t} (id, v) VALUES (2, 'b')`)
        await tx.execute(`INSERT INTO ${t} (id, v) VALUES (1, 'duplicate')`).catch(() => {})
        return 'looks committed'
      })
      const error = await outcome.catch((e: unknown) => e)
      expect(BreakwaterError.is(error) && error.code).toBe('TRANSACTION_MISUSE')
      expect(await db.query(`SELECT id FROM ${t}`)).toEqual([{ id: 1 }])
    },
  )

  it('runs nothing outside the transaction after a swallowed statement that ended it, and rejects', async () => {
    const t = await table()
    await db.execute(`INSERT INTO ${t} (id, v) VALUES (1, 'a')`)
    // On SQLite, a conflict under OR ROLLBACK (like RAISE(ROLLBACK) in a trigger, or an I/O
    // error) rolls back the whole transaction, not just the statement; on PostgreSQL every
    // failed statement aborts the transaction.
    const ending =
      target.dialect === 'sqlite'
        ? `INSERT OR ROLLBACK INTO ${t} (id, v) VALUES (1, 'duplicate')`
        : `INSERT INTO ${t} (id, v) VALUES (1, 'duplicate')`
    let late: unknown
    const outcome = db.transaction(async (tx) => {
      await tx.execute(`INSERT INTO ${t} (id, v) VALUES (2, 'b')`)
      await tx.execute(ending).catch(() => {})
      late = await tx.execute(`INSERT INTO ${t} (id, v) VALUES (3, 'after')`).catch((e) => e)
      return 'looks committed'
    })
    const error = await outcome.catch((e: unknown) => e)
    expect(late).toBeInstanceOf(Error)
    expect(BreakwaterError.is(error) && error.code).toBe('TRANSACTION_MISUSE')
    expect(await db.query(`SELECT id FROM ${t}`)).toEqual([{ id: 1 }])
  })

  it('loses no update when many transactions increment one counter concurrently', async () => {
    const t = await table('id INTEGER PRIMARY KEY, n INTEGER NOT NULL')
    await db.execute(`INSERT INTO ${t} (id, n) VALUES (1, 0)`)
    const count = 25
    const seen = await Promise.all(
      Array.from({ length: count }, () =>
        db.transaction(async (tx) => {
          const [row] = await tx.query<{ n: number }>(
            `UPDATE ${t} SET n = n + 1 WHERE id = $1 RETURNING n`,
            [1],
          )
          return row!.n
        }),
      ),
    )
    expect(seen.sort((a, b) => a - b)).toEqual(Array.from({ length: count }, (_, i) => i + 1))
    expect(await db.query(`SELECT n FROM ${t}`)).toEqual([{ n: count }])
  })

  it('rejects with the driver error for bad SQL and stays usable', async () => {
    await expect(db.query('SELEKT 1')).rejects.toThrow(/syntax/i)
    await expect(db.query('SELECT * FROM no_such_table_here')).rejects.toThrow(/no_such_table_here/)
    expect(await db.query('SELECT 1 AS one')).toEqual([{ one: 1 }])
  })

  it('rejects a parameter count that does not match the statement', async () => {
    const t = await table()
    await expect(db.query(`SELECT v FROM ${t} WHERE id = $1 AND v = $2`, [1])).rejects.toThrow()
    await expect(db.query(`SELECT v FROM ${t} WHERE id = $1`, [1, 2])).rejects.toThrow()
  })

  // SQLite stores a bound NaN as NULL without a word (a timestamp computed from a bad value
  // became "no timestamp"), where PostgreSQL refuses it for an integer column.
  it('refuses SQL that is not a string, or params that are not an array, naming which', async () => {
    for (const sql of [undefined, null, 42, { text: 'SELECT 1' }, ['SELECT 1']]) {
      for (const error of [
        await db.query(sql as never).catch((e: unknown) => e),
        await db.transaction((tx) => tx.execute(sql as never)).catch((e: unknown) => e),
      ]) {
        expect(error, String(sql)).toBeInstanceOf(InvalidOptionError)
        expect((error as InvalidOptionError).option).toBe('sql')
      }
    }
    for (const params of [1, 'x', { 0: 1, length: 1 }]) {
      const error = await db.query('SELECT $1 AS v', params as never).catch((e: unknown) => e)
      expect(error, String(params)).toBeInstanceOf(InvalidOptionError)
      expect((error as InvalidOptionError).option).toBe('params')
    }
    // The driver stays usable.
    expect(await db.query('SELECT 1 AS v')).toEqual([{ v: 1 }])
  })

  it('refuses NaN as a parameter instead of storing it as NULL', async () => {
    const t = await table(`id INTEGER PRIMARY KEY, ts ${bigint}`)
    await expect(
      db.execute(`INSERT INTO ${t} (id, ts) VALUES ($1, $2)`, [1, Number.NaN]),
    ).rejects.toThrow(target.dialect === 'sqlite' ? /params\[1\].*NaN/ : /NaN/)
    expect(await db.query(`SELECT id, ts FROM ${t}`)).toEqual([])
  })

  // better-sqlite3 refuses these with a bare TypeError naming neither the parameter nor what
  // to pass instead; pg binds a Date as local-time text and an object as its JSON.
  it.runIf(target.dialect === 'sqlite')(
    'refuses a Date, an object or an array as a parameter on SQLite, naming it',
    async () => {
      const t = await table(`id INTEGER PRIMARY KEY, ts ${bigint}`)
      for (const value of [new Date(0), { at: 1 }, [1, 2]]) {
        const error = await db
          .execute(`INSERT INTO ${t} (id, ts) VALUES ($1, $2)`, [1, value])
          .catch((e: unknown) => e)
        expect(error).toBeInstanceOf(InvalidOptionError)
        expect((error as InvalidOptionError).option).toBe('params[1]')
      }
      // A Buffer is an object too, and binds.
      expect(await db.query(`SELECT id FROM ${t} WHERE ts = $1`, [Buffer.from('x')])).toEqual([])
      expect(await db.query(`SELECT id, ts FROM ${t}`)).toEqual([])
    },
  )

  it('classifies a unique violation the same way on both dialects', async () => {
    const t = await table()
    await db.execute(`INSERT INTO ${t} (id, v) VALUES (1, 'a')`)
    const error = await db.execute(`INSERT INTO ${t} (id, v) VALUES (1, 'b')`).catch((e) => e)
    expect(sqlErrorKind(error)).toBe('unique-violation')
    expect(sqlErrorKind(new Error('x'))).toBe('other')
  })

  it('closes: later statements and transactions fail with STORE_CLOSED, close is idempotent', async () => {
    const own = await target.open('close')
    await own.db.query('SELECT 1 AS one')
    await own.db.close()
    await own.db.close()
    const queryError = await own.db.query('SELECT 1').catch((e) => e)
    const txError = await own.db.transaction(async () => 1).catch((e) => e)
    expect(BreakwaterError.is(queryError) && queryError.code).toBe('STORE_CLOSED')
    expect(BreakwaterError.is(txError) && txError.code).toBe('STORE_CLOSED')
    await own.cleanup()
  })

  it('a second close() while the first is under way resolves only once the driver has closed', async () => {
    const own = await target.open('close-twice')
    await own.db.query('SELECT 1 AS one')
    const order: string[] = []
    const first = own.db.close().then(() => order.push('first'))
    const second = own.db.close().then(() => order.push('second'))
    await Promise.all([first, second])
    expect(order).toEqual(['first', 'second'])
    await own.cleanup()
  })

  // close() waits for the transactions in progress (SQLite: the driver's lock; PostgreSQL:
  // pool.end() waits for every pooled connection to come back). Called from inside one of them,
  // it waited for a transaction that waited for it. SQLite refuses it (its driver already knows
  // its own transaction's context); PostgreSQL does not detect it (see docs/architecture.md).
  it('refuses close() from inside its own transaction (SQLite); from outside, close() waits for it', async () => {
    const own = await target.open('close-inside')
    const t = uniqueTable()
    await own.db.execute(`CREATE TABLE ${t} (id INTEGER PRIMARY KEY)`)
    const inside: unknown[] = []
    await own.db.transaction(async (tx) => {
      if (target.dialect === 'sqlite') {
        inside.push(await own.db.close().catch((e) => e))
        await tx.transaction(async () => {
          inside.push(await own.db.close().catch((e) => e))
        })
      }
      // The transaction goes on and commits.
      await tx.execute(`INSERT INTO ${t} (id) VALUES (1)`)
    })
    for (const error of inside) {
      expect(BreakwaterError.is(error) && error.code).toBe('TRANSACTION_MISUSE')
      expect((error as Error).message).toMatch(/close\(\).*own transaction/)
    }
    expect(inside).toHaveLength(target.dialect === 'sqlite' ? 2 : 0)
    // From outside, close() lets the open transaction finish and commit first.
    const started = gate()
    const proceed = gate()
    const running = own.db.transaction(async (tx) => {
      started.open()
      await proceed.promise
      await tx.execute(`INSERT INTO ${t} (id) VALUES (2)`)
      return tx.query<{ id: number }>(`SELECT id FROM ${t} ORDER BY id`)
    })
    await started.promise
    const closing = own.db.close()
    proceed.open()
    expect((await running).map((r) => Number(r.id))).toEqual([1, 2])
    await closing
    const after = await own.db.query('SELECT 1').catch((e) => e)
    expect(BreakwaterError.is(after) && after.code).toBe('STORE_CLOSED')
    await own.cleanup()
  })

  it('keeps working when more distinct statements run than the cache holds', async () => {
    const own = await target.open('cache', {
      sqlite: { statementCacheSize: 2 },
    })
    try {
      for (let round = 0; round < 3; round++) {
        for (let i = 0; i < 6; i++) {
          const rows = await own.db.query<{ v: number }>(`SELECT $1 + ${i} AS v`, [round])
          expect(Number(rows[0]!.v)).toBe(round + i)
        }
      }
    } finally {
      await own.cleanup()
    }
  })
})
