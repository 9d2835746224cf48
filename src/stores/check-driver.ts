import { InvalidOptionError } from '../core/errors.js'
import type { SqlDriver, SqlExecutor } from './types.js'

function hasDialect(value: object): boolean {
  const dialect = (value as { dialect?: unknown }).dialect
  return dialect === 'sqlite' || dialect === 'postgres'
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
  if (
    typeof value !== 'object' ||
    value === null ||
    typeof (value as { transaction?: unknown }).transaction !== 'function' ||
    !hasDialect(value)
  )
    throw new InvalidOptionError(option, expected, value)
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
  if (
    typeof value !== 'object' ||
    value === null ||
    typeof (value as { query?: unknown }).query !== 'function' ||
    !hasDialect(value)
  )
    throw new InvalidOptionError(option, expected, value)
}
