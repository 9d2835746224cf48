import { AsyncLocalStorage } from 'node:async_hooks'
import { TransactionMisuseError } from './errors.js'
import type { ScopedTransaction } from './scoped-transaction.js'

/** A transaction of one of breakwater's drivers, open in the current async context. */
export interface OpenTransaction {
  readonly driver: object
  readonly tx: ScopedTransaction
}

/**
 * Which SQLite driver's transaction the current async context runs inside, so that a call on
 * the driver from within its own transaction fails fast instead of waiting for that
 * transaction forever. The PostgreSQL driver does not use it: on Node 20 an
 * `AsyncLocalStorage` turns on promise hooks for the whole process (see docs/architecture.md).
 */
export const currentTransaction = new AsyncLocalStorage<OpenTransaction>()

/**
 * Throws `TransactionMisuseError` when the caller runs inside an open transaction of `driver`:
 * its `close()` waits for the transactions in progress, and that one waits for `close()`.
 */
export function refuseCloseInside(driver: object, name: string): void {
  const current = currentTransaction.getStore()
  if (current?.driver === driver && current.tx.open) {
    throw new TransactionMisuseError(
      `close() was called on the ${name} driver from inside its own transaction, which close() would wait for forever; close it after the transaction callback has returned`,
    )
  }
}
