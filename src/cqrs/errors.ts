import { BreakwaterError } from '../core/errors.js'
import type { ExpectedVersion } from './types.js'

/**
 * An append (or delete, or metadata write) found the stream in another state than its
 * `expectedVersion` demanded; nothing was written (code `WRONG_EXPECTED_VERSION`). Not
 * retryable as is: the same write would fail again. Re-read the stream, decide again and
 * append at the new version (command handlers do this on their own).
 *
 * @example
 * ```ts
 * try { await store.append('order-1', events, { expectedVersion: 3 }) }
 * catch (error) {
 *   if (error instanceof WrongExpectedVersionError) console.log(error.expected, error.actual)
 * }
 * ```
 */
export class WrongExpectedVersionError extends BreakwaterError {
  /** The stream written to. */
  readonly stream: string
  /** What the caller expected. */
  readonly expected: ExpectedVersion
  /** The stream's actual version (0: never written; a deleted stream keeps its last version). */
  readonly actual: number
  /** Whether the stream is soft-deleted. */
  readonly deleted: boolean

  constructor(stream: string, expected: ExpectedVersion, actual: number, deleted: boolean) {
    super(
      'WRONG_EXPECTED_VERSION',
      `Stream "${stream}" was expected at ${describeExpected(expected)} but is at version ${actual}${deleted ? ' (deleted)' : ''}`,
    )
    this.stream = stream
    this.expected = expected
    this.actual = actual
    this.deleted = deleted
  }
}

function describeExpected(expected: ExpectedVersion): string {
  return typeof expected === 'number' ? `version ${expected}` : `"${expected}"`
}

/**
 * A projection rebuild found, when it came to swap its tables in, that a later rebuild of the
 * same projection had started (code `REBUILD_SUPERSEDED`): the later one owns the projection's
 * fresh tables now, so this one swapped nothing in. Not retryable: the later rebuild finishes
 * the work.
 *
 * @example
 * ```ts
 * try { await projector.rebuild() }
 * catch (error) {
 *   if (!(error instanceof RebuildSupersededError)) throw error // another instance rebuilds
 * }
 * ```
 */
export class RebuildSupersededError extends BreakwaterError {
  /** The projection. */
  readonly projection: string

  /** @param cause What the rebuild's own work failed with, when it found out that way. */
  constructor(projection: string, cause?: unknown) {
    super(
      'REBUILD_SUPERSEDED',
      `projection "${projection}": this rebuild was superseded by another one that started later`,
      cause === undefined ? {} : { cause },
    )
    this.projection = projection
  }
}
