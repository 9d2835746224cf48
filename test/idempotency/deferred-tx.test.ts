// Unit tests of ctx.tx's transaction (DeferredTransaction) over an in-memory fake store whose
// transaction begins only when the test says so: what happens to statements, deferred writes
// and a commit decided while the transaction is still beginning.
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { DeferredTransaction } from '../../src/idempotency/deferred-tx.js'
import type { IdempotencyStore } from '../../src/idempotency/store.js'
import type { SqlDialect, SqlTransaction } from '../../src/stores/index.js'
import { gate } from './servers.js'

/**
 * A fake store whose transaction begins once `begun()` resolves (it may throw: BEGIN failed)
 * and notes BEGIN, COMMIT and ROLLBACK in `sent`; `tx` is the transaction's executor.
 */
function loggingStore(
  sent: string[],
  tx: SqlTransaction,
  begun: () => Promise<unknown>,
): IdempotencyStore {
  return {
    async transaction<T>(fn: (tx: SqlTransaction) => Promise<T>): Promise<T> {
      await begun()
      sent.push('BEGIN')
      try {
        const value = await fn(tx)
        sent.push('COMMIT')
        return value
      } catch (error) {
        sent.push('ROLLBACK')
        throw error
      }
    },
  } as unknown as IdempotencyStore
}

/** A store whose transaction begins when `begin` is opened, and logs what its `tx` is sent. */
function fakeStore(dialect: SqlDialect, failing = new Set<string>()) {
  const sent: string[] = []
  const begin = gate()
  let beginError: Error | undefined
  const tx: SqlTransaction = {
    dialect,
    async query<R>(sql: string) {
      sent.push(sql)
      if (failing.has(sql)) throw new Error(`refused: ${sql}`)
      return [] as R[]
    },
    async execute(sql: string) {
      sent.push(sql)
      if (failing.has(sql)) throw new Error(`refused: ${sql}`)
      return { rowCount: 1 }
    },
    transaction: (fn) => fn(tx),
  }
  const store = loggingStore(sent, tx, async () => {
    await begin.promise
    if (beginError !== undefined) throw beginError
  })
  return {
    store,
    sent,
    begin: () => begin.open(),
    failBegin: (error: Error) => {
      beginError = error
      begin.open()
    },
  }
}

describe.each(['sqlite', 'postgres'] as const)('DeferredTransaction (%s)', (dialect) => {
  it('sends statements made while the transaction began in order, before the result write', async () => {
    const fake = fakeStore(dialect)
    const tx = new DeferredTransaction(fake.store, dialect)
    tx.defer('write 1')
    const read = tx.query('read')
    tx.defer('write 2')
    // The commit is decided before BEGIN was answered.
    const committed = tx.commit(async (inner) => {
      await inner.execute('record')
    })
    fake.begin()
    await committed
    await read
    expect(fake.sent).toEqual(['BEGIN', 'write 1', 'read', 'write 2', 'record', 'COMMIT'])
  })

  it('rolls back without recording when a deferred write failed, with its error', async () => {
    const fake = fakeStore(dialect, new Set(['write 2']))
    const tx = new DeferredTransaction(fake.store, dialect)
    tx.defer('write 1')
    tx.defer('write 2')
    const committed = tx.commit(async (inner) => {
      await inner.execute('record')
    })
    fake.begin()
    await expect(committed).rejects.toThrow('refused: write 2')
    expect(fake.sent).not.toContain('COMMIT')
    expect(fake.sent.at(-1)).toBe('ROLLBACK')
    // SQLite must not even start the result write; PostgreSQL sends it (the server refuses it).
    if (dialect === 'sqlite') expect(fake.sent).not.toContain('record')
  })

  it('fails the statements waiting for a BEGIN that failed, and the commit, with its error', async () => {
    const fake = fakeStore(dialect)
    const tx = new DeferredTransaction(fake.store, dialect)
    const read = tx.query('read')
    tx.defer('write')
    const committed = tx.commit(async () => {})
    fake.failBegin(new Error('no connection'))
    await expect(read).rejects.toThrow('no connection')
    await expect(committed).rejects.toThrow('no connection')
    expect(fake.sent).toEqual([])
  })

  it('fails a statement made after BEGIN failed with its error, instead of leaving it waiting forever', async () => {
    const fake = fakeStore(dialect)
    const tx = new DeferredTransaction(fake.store, dialect)
    // A deferred write first: its failure (BEGIN's) is silent until the commit.
    tx.defer('write')
    fake.failBegin(new Error('no connection'))
    await expect(tx.query('first read')).rejects.toThrow('no connection')
    // The handler goes on after the failure: its next statements fail too, and so does a
    // deferred write, at the latest at the commit.
    await expect(tx.query('second read')).rejects.toThrow('no connection')
    await expect(tx.transaction(async () => {})).rejects.toThrow('no connection')
    tx.defer('late write')
    await expect(tx.commit(async () => {})).rejects.toThrow('no connection')
    expect(fake.sent).toEqual([])
  })

  it('refuses a deferred write once the commit was decided', async () => {
    const fake = fakeStore(dialect)
    const tx = new DeferredTransaction(fake.store, dialect)
    const committed = tx.commit(async () => {})
    expect(() => tx.defer('late')).toThrow(/after the idempotent result was recorded/)
    fake.begin()
    await committed
    expect(fake.sent).not.toContain('late')
  })

  it('refuses a deferred write after a rollback with the rollback reason', async () => {
    const fake = fakeStore(dialect)
    const tx = new DeferredTransaction(fake.store, dialect)
    tx.defer('write')
    const rolledBack = tx.rollback(new Error('lease lost'))
    expect(() => tx.defer('late')).toThrow('lease lost')
    fake.begin()
    await rolledBack
    expect(fake.sent).not.toContain('COMMIT')
  })
})

/** One statement the property below makes on ctx.tx. */
type Op = { readonly kind: 'defer' | 'query'; readonly fails: boolean }

/**
 * A store whose BEGIN and every statement's answer come when fast-check's scheduler says so;
 * it notes statements in the order they were sent.
 */
function scheduledStore(s: fc.Scheduler, dialect: SqlDialect) {
  const sent: string[] = []
  const answer = async (sql: string) => {
    sent.push(sql)
    await s.schedule(Promise.resolve(), `answer ${sql}`)
    if (sql.endsWith('!')) throw new Error(`refused: ${sql}`)
  }
  const tx: SqlTransaction = {
    dialect,
    query: async <R>(sql: string) => {
      await answer(sql)
      return [] as R[]
    },
    execute: async (sql: string) => {
      await answer(sql)
      return { rowCount: 1 }
    },
    transaction: (fn) => fn(tx),
  }
  const store = loggingStore(sent, tx, () => s.schedule(Promise.resolve(), 'BEGIN answered'))
  return { store, sent }
}

describe.each(['sqlite', 'postgres'] as const)(
  'DeferredTransaction interleavings (%s)',
  (dialect) => {
    it('in any order of answers: statements keep their order, the result write comes last, and it commits exactly when no deferred write failed', async () => {
      await fc.assert(
        fc.asyncProperty(
          fc.scheduler(),
          fc.array(fc.record({ kind: fc.constantFrom('defer', 'query'), fails: fc.boolean() }), {
            minLength: 1,
            maxLength: 6,
          }),
          fc.nat(6),
          async (s, ops: Op[], commitAfter) => {
            const { store, sent } = scheduledStore(s, dialect)
            const tx = new DeferredTransaction(store, dialect)
            const names = ops.map((op, i) => `${op.kind} ${i}${op.fails ? '!' : ''}`)
            const queries: Promise<unknown>[] = []
            let committed: Promise<void> | undefined
            const decide = () => {
              committed = tx.commit(async (inner) => {
                await inner.execute('record')
              })
              committed.catch(() => {})
            }
            // The handler makes its statements one after another, awaiting none of them; the
            // commit is decided after some prefix of them (the rest are then refused).
            let refused = 0
            ops.forEach((op, i) => {
              if (i === commitAfter) decide()
              const name = names[i]!
              if (op.kind === 'defer') {
                try {
                  tx.defer(name)
                } catch {
                  refused++
                }
              } else {
                const query = tx.query(name)
                query.catch(() => {})
                queries.push(query)
              }
            })
            if (committed === undefined) decide()
            await s.waitFor(Promise.allSettled([committed!, ...queries]))
            const made = names.slice(0, Math.min(commitAfter, ops.length))
            expect(sent.slice(0, 1 + made.length)).toEqual(['BEGIN', ...made])
            const deferredFailed = ops
              .slice(0, made.length)
              .some((op) => op.kind === 'defer' && op.fails)
            const outcome = await committed!.then(
              () => 'committed',
              (error: Error) => error.message,
            )
            if (deferredFailed) {
              const first = made.find((name, i) => ops[i]!.kind === 'defer' && name.endsWith('!'))
              expect(outcome).toBe(`refused: ${first}`)
              expect(sent.at(-1)).toBe('ROLLBACK')
              if (dialect === 'sqlite') expect(sent).not.toContain('record')
            } else {
              expect(outcome).toBe('committed')
              expect(sent.slice(1 + made.length)).toEqual(['record', 'COMMIT'])
            }
            expect(refused).toBe(ops.slice(made.length).filter((op) => op.kind === 'defer').length)
          },
        ),
        { numRuns: 200 },
      )
    })
  },
)
