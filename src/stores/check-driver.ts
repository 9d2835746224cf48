import { InvalidOptionError } from '../core/errors.js'
import type { SqlDriver, SqlExecutor } from './types.js'

// A SQLite or PostgreSQL executor whose `method` is a function (`transaction` for a driver,
// `query` for anything statements run on).
function isExecutorWith(value: unknown, method: 'transaction' | 'query'): boolean {
  if (typeof value !== 'object' || value === null) return false
  const { dialect } = value as { dialect?: unknown }
  return (
    typeof (value as Record<string, unknown>)[method] === 'function' &&
    (dialect === 'sqlite' || dialect === 'postgres')
  )
}

/**
 * Refuses with `InvalidOptionError` naming `option` anything that is not a SQLite or
 * PostgreSQL {@link SqlDriver} (what `openDatabase` returns): else an `undefined` left by a
 * failed setup, or a URL passed where the driver belongs, failed later with a bare TypeError.
 */
export function checkSqlDriver(
  option: string,
  value: unknown,
  expected = 'a SqlDriver',
): asserts value is SqlDriver {
  if (!isExecutorWith(value, 'transaction')) throw new InvalidOptionError(option, expected, value)
}

/**
 * As {@link checkSqlDriver} for anything statements can run on: a driver, or a transaction of
 * one.
 */
export function checkSqlExecutor(
  option: string,
  value: unknown,
  expected = 'a SqlExecutor (a SqlDriver or its transaction)',
): asserts value is SqlExecutor {
  if (!isExecutorWith(value, 'query')) throw new InvalidOptionError(option, expected, value)
}
