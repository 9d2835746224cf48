import { InvalidOptionError } from '../core/errors.js'

/** A statement written with `$n` placeholders, translated for a driver that binds `?`. */
export interface PositionalSql {
  /** The SQL with every `$n` outside literals and comments replaced by `?`. */
  readonly sql: string
  /**
   * For each `?` in order, the 0-based index of the parameter it binds; `undefined` when the
   * placeholders are exactly `$1, $2, ... $n` once each in order, so the parameters bind as given.
   */
  readonly order: readonly number[] | undefined
  /** The highest `$n` used: how many parameters the statement expects. */
  readonly parameterCount: number
}

/**
 * Rewrites `$1..$n` placeholders to positional `?`, skipping string literals, quoted
 * identifiers and comments, and records which parameter each `?` binds (a placeholder used
 * twice binds its value twice).
 *
 * better-sqlite3 treats SQLite's numbered forms (`?1`, `$1`) as *named* parameters that must be
 * bound from an object keyed "1", "2", ...; plain `?` binds straight from an array, which is
 * measurably cheaper per call, so the translation is done once and cached by the caller.
 */
export function toPositional(sql: string): PositionalSql {
  let out = ''
  let last = 0
  const order: number[] = []
  let inOrder = true
  let max = 0
  const n = sql.length
  let i = 0
  while (i < n) {
    const c = sql.charCodeAt(i)
    if (c === 39 /* ' */ || c === 34 /* " */ || c === 96 /* ` */) {
      const end = sql.indexOf(sql[i]!, i + 1)
      i = end === -1 ? n : end + 1
    } else if (c === 91 /* [ */) {
      const end = sql.indexOf(']', i + 1)
      i = end === -1 ? n : end + 1
    } else if (c === 45 /* - */ && sql.charCodeAt(i + 1) === 45) {
      const end = sql.indexOf('\n', i + 2)
      i = end === -1 ? n : end + 1
    } else if (c === 47 /* / */ && sql.charCodeAt(i + 1) === 42 /* * */) {
      const end = sql.indexOf('*/', i + 2)
      i = end === -1 ? n : end + 2
    } else if (
      c === 36 /* $ */ &&
      isDigit(sql.charCodeAt(i + 1)) &&
      !isWordChar(sql.charCodeAt(i - 1))
    ) {
      let j = i + 1
      while (j < n && isDigit(sql.charCodeAt(j))) j++
      const index = Number(sql.slice(i + 1, j))
      if (index < 1) {
        throw new InvalidOptionError('sql', 'placeholders numbered from $1', sql)
      }
      out += `${sql.slice(last, i)}?`
      last = j
      if (index !== order.length + 1) inOrder = false
      order.push(index - 1)
      if (index > max) max = index
      i = j
    } else if (c === 63 /* ? */) {
      throw new InvalidOptionError('sql', 'placeholders written as $1..$n, not ?', sql)
    } else {
      i++
    }
  }
  out += sql.slice(last)
  return { sql: out, order: inOrder ? undefined : order, parameterCount: max }
}

function isDigit(c: number): boolean {
  return c >= 48 && c <= 57
}

// `$` inside a word is part of an identifier (`price$1` is a column name in both dialects).
function isWordChar(c: number): boolean {
  return isDigit(c) || (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || c === 95 || c === 36
}

/** The error for a statement's `sql` that is not a string (the drivers' own name neither). */
export function notSql(sql: unknown): InvalidOptionError {
  return new InvalidOptionError('sql', 'a string of SQL', sql)
}

/** The error for a statement's `params` that is not an array. */
export function notParams(params: unknown): InvalidOptionError {
  return new InvalidOptionError('params', 'an array of values, one for each $n', params)
}

/**
 * Builds the positional argument list for a translated statement and converts values SQLite
 * cannot bind: booleans become 0/1 and `undefined` becomes `null` (as pg does). NaN is refused
 * with `InvalidOptionError` naming its `params[i]`: SQLite would store it as NULL without a word,
 * where PostgreSQL refuses it for an integer column. So are a Date, an object and an array
 * (better-sqlite3 refuses them with a bare TypeError; pg binds them as text or JSON).
 */
export function bindPositional(
  translated: PositionalSql,
  params: readonly unknown[],
): readonly unknown[] {
  if (!Array.isArray(params)) throw notParams(params)
  if (params.length !== translated.parameterCount) {
    // A caller's bug, named with a code like every other bad argument (PostgreSQL's driver
    // answers the same mistake with the server's own error).
    throw new InvalidOptionError(
      'params',
      `the ${translated.parameterCount} parameter(s) the statement expects`,
      `${params.length} parameter(s)`,
    )
  }
  let converts = false
  for (let i = 0; i < params.length; i++) {
    const value = params[i]
    if (typeof value === 'boolean' || value === undefined) converts = true
    // A NaN timestamp or count stored as NULL reads back as "none" (no lease, no timer).
    else if (typeof value === 'number' && Number.isNaN(value)) {
      throw new InvalidOptionError(
        `params[${i}]`,
        'a number, not NaN (SQLite would store it as NULL)',
        value,
      )
    } else if (typeof value === 'object' && value !== null && !(value instanceof Uint8Array)) {
      // better-sqlite3's own refusal is a bare TypeError naming no parameter.
      throw new InvalidOptionError(
        `params[${i}]`,
        value instanceof Date
          ? 'a number, string, bigint, boolean, null or Uint8Array (a Date: pass date.getTime(), as breakwater stores times)'
          : 'a number, string, bigint, boolean, null or Uint8Array (an object or array: pass JSON.stringify(value))',
        value,
      )
    }
  }
  const order = translated.order
  if (order === undefined) {
    // Fast path: copy only when a value needs converting.
    return converts ? params.map(toSqliteValue) : params
  }
  const args = new Array<unknown>(order.length)
  for (let i = 0; i < order.length; i++) args[i] = toSqliteValue(params[order[i]!])
  return args
}

function toSqliteValue(value: unknown): unknown {
  if (typeof value === 'boolean') return value ? 1 : 0
  if (value === undefined) return null
  return value
}
