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
