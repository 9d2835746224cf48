// Group commit for SQLite: several callers' small write units share one BEGIN ... COMMIT.
//
// SQLite writes every page a transaction changed to its write-ahead log at COMMIT (a frame
// header and the page, two pwrite calls each), and an idempotent request's claim and result
// touch the same few index pages as its neighbours'. Committed one by one, 20,000 new keys cost
// about 63 us each in better-sqlite3 alone; 16 to a commit, about 18 us (measured 2026-12-05,
// WAL, synchronous = NORMAL). Units are lists of statements, never callbacks: no caller's code
// runs while the shared transaction is open, so a unit can neither wait for another unit of its
// own group (a deadlock) nor hold the group's commit back while it waits for the network.
import { TransactionMisuseError } from './errors.js'
import type { SqlWrite, WriteCheck } from './types.js'

/** A unit waiting for its group, with the promise it settles. */
export interface PendingUnit {
  readonly writes: readonly SqlWrite[]
  readonly check: WriteCheck | undefined
  readonly resolve: (rowCounts: number[]) => void
  readonly reject: (error: unknown) => void
}

/** What a group needs of the connection; every method runs synchronously. */
export interface GroupConnection {
  /** Opens the group's transaction (`BEGIN IMMEDIATE`). */
  begin(): void
  /** Commits it. */
  commit(): void
  /** Runs a statement of a unit and returns the number of rows it changed. */
  run(sql: string, params: readonly unknown[]): number
  /** Runs a savepoint statement. */
  exec(sql: string): void
  /** Whether the group's transaction is still open (SQLite ends it on some failures). */
  inTransaction(): boolean
  /** Rolls the group's transaction back if it is open, never throwing. */
  rollbackQuietly(): void
  /** The error to give callers for a failure of the connection (naming the file). */
  described(error: unknown): unknown
}

const savepoint = 'SAVEPOINT breakwater_unit'
const release = 'RELEASE breakwater_unit'
const rollbackTo = 'ROLLBACK TO breakwater_unit'
const noParams: readonly unknown[] = []

/**
 * Runs `units` in one transaction, each in a savepoint of its own (even a unit of one statement:
 * `OR FAIL` and `RAISE(FAIL)` keep the rows a failed statement wrote before it failed), and
 * settles every unit's promise: resolved with its row counts once the COMMIT succeeded, rejected
 * with its own statement's error or its check's refusal (its savepoint rolled back, the others
 * kept), or with the COMMIT's error when that failed (then nothing of the group was written).
 * A COMMIT refused for a constraint (a deferred foreign key one unit broke) is not the other
 * units' fault: the group is rolled back and each unit runs again alone, so only the one that
 * broke it is rejected.
 *
 * A failure that ends the whole transaction (`OR ROLLBACK`, a full disk, an I/O error) rejects
 * the unit that met it and returns the others of the group, none of them written: the caller
 * runs them again in a new transaction. Each call settles at least one unit, so that ends.
 */
export function runGroup(
  connection: GroupConnection,
  units: readonly PendingUnit[],
): PendingUnit[] {
  try {
    connection.begin()
  } catch (error) {
    const described = connection.described(error)
    for (const unit of units) unit.reject(described)
    return []
  }
  const kept: Array<{ readonly unit: PendingUnit; readonly rowCounts: number[] }> = []
  for (let index = 0; index < units.length; index++) {
    const unit = units[index]!
    try {
      connection.exec(savepoint)
      const rowCounts = unit.writes.map((write) =>
        connection.run(write.sql, write.params ?? noParams),
      )
      const refusal = unit.check?.(rowCounts)
      if (refusal !== undefined) {
        connection.exec(rollbackTo)
        connection.exec(release)
        unit.reject(refusal)
        continue
      }
      connection.exec(release)
      kept.push({ unit, rowCounts })
    } catch (error) {
      unit.reject(connection.described(error))
      if (connection.inTransaction()) {
        try {
          connection.exec(rollbackTo)
          connection.exec(release)
          continue
        } catch {
          // Treated as the end of the whole transaction, below.
        }
      }
      connection.rollbackQuietly()
      return [...kept.map((entry) => entry.unit), ...units.slice(index + 1)]
    }
  }
  try {
    connection.commit()
  } catch (error) {
    connection.rollbackQuietly()
    if (kept.length > 1 && isConstraintFailure(error)) {
      for (const entry of kept) runAlone(connection, entry.unit)
      return []
    }
    const described = connection.described(error)
    for (const entry of kept) entry.unit.reject(described)
    return []
  }
  for (const entry of kept) entry.unit.resolve(entry.rowCounts)
  return []
}

// A unit run again in a group of its own, until it is settled.
function runAlone(connection: GroupConnection, unit: PendingUnit): void {
  let left = [unit]
  while (left.length > 0) left = runGroup(connection, left)
}

function isConstraintFailure(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code
  return typeof code === 'string' && code.startsWith('SQLITE_CONSTRAINT')
}

// Statements that would end, begin or break the group's transaction or its savepoints, after
// any leading comments and empty statements (SQLite skips a leading ';').
const groupControlStatement =
  /^(?:\s+|;|--[^\n]*(?:\n|$)|\/\*[\s\S]*?\*\/)*(begin|start\s+transaction|commit|end|abort|prepare\s+transaction|rollback|savepoint|release)\b/i

/**
 * The error for a unit that cannot run in a group: no statements, or a statement that ends or
 * begins a transaction or works on savepoints (it would commit or undo other callers' units).
 * Undefined when the unit is fine.
 */
export function groupedWritesRefusal(writes: readonly SqlWrite[]): Error | undefined {
  if (!Array.isArray(writes) || writes.length === 0) {
    return new TransactionMisuseError('writeAtomically was given no statements to write')
  }
  for (const write of writes) {
    const word = groupControlStatement.exec(write?.sql)?.[1]
    if (word !== undefined) {
      return new TransactionMisuseError(
        `writeAtomically was given a statement that controls a transaction or a savepoint (${JSON.stringify(word.split(/\s/, 1)[0]!.toUpperCase())}): the units of a group share one transaction, so the driver begins, commits and rolls back for them`,
      )
    }
  }
  return undefined
}

/**
 * Whether `sql` may be one of a unit's writes (see {@link groupedWritesRefusal}); callers that
 * can fall back to an ordinary transaction use it to decide before they queue a unit.
 */
export function isGroupableWrite(sql: string): boolean {
  return typeof sql === 'string' && !groupControlStatement.test(sql)
}
