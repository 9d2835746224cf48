import { InvalidOptionError } from '../core/errors.js'
import type { SqlDriver } from '../stores/index.js'

/**
 * @internal Refuses, naming `tx`, an executor that is not a transaction's: the driver itself
 * (it has `close`) runs each statement on its own, so a row written through it commits at once,
 * apart from the writes it belongs with. On PostgreSQL it even runs on another pooled
 * connection when called inside `db.transaction`, so the row outlives a rollback. `expected`
 * says what to pass instead and why.
 */
export function checkTransactionExecutor(tx: unknown, expected: string): void {
  const executor = tx as Partial<SqlDriver> | null | undefined
  if (
    typeof executor !== 'object' ||
    executor === null ||
    typeof executor.execute !== 'function' ||
    typeof executor.close === 'function'
  ) {
    throw new InvalidOptionError('tx', expected, tx)
  }
}
