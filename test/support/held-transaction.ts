// A transaction left open on purpose: tests of what readers and relays do while a writer is
// still running (the PostgreSQL horizon, locks, late commits).
import type { SqlDriver, SqlTransaction } from '../../src/stores/index.js'

/** An open transaction; see {@link holdOpenTransaction}. */
export interface HeldTransaction {
  /** Commits it and resolves when it has ended. */
  commit(): Promise<void>
}

/**
 * Runs `work` in a transaction of `db` and resolves once it has run, leaving the transaction
 * open (holding whatever `work` wrote or locked) until `commit()`.
 */
export async function holdOpenTransaction(
  db: SqlDriver,
  work: (tx: SqlTransaction) => Promise<unknown>,
): Promise<HeldTransaction> {
  let release!: () => void
  const gate = new Promise<void>((resolve) => {
    release = resolve
  })
  let ran!: () => void
  const done = new Promise<void>((resolve) => {
    ran = resolve
  })
  const ended = db.transaction(async (tx) => {
    await work(tx)
    ran()
    await gate
  })
  // A failing `work` ends the transaction before `ran`: report that instead of waiting.
  await Promise.race([done, ended])
  return {
    commit: async () => {
      release()
      await ended
    },
  }
}

/**
 * Runs `fn` while an empty transaction of `db` is held open, then commits it: statements sent
 * meanwhile wait for SQLite's one writer, or for the connection of a PostgreSQL pool of size 1.
 */
export async function whileTransactionHeld(db: SqlDriver, fn: () => Promise<void>): Promise<void> {
  const held = await holdOpenTransaction(db, async () => {})
  try {
    await fn()
  } finally {
    await held.commit()
  }
}
