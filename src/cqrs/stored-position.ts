import { describeValue } from '../core/errors.js'
import { StoredDataError, type StoredPlace } from '../stores/errors.js'

/**
 * A position read back from a checkpoint or projection row, or undefined when it is not a
 * whole number from 0. PostgreSQL's BIGINT columns come back as numbers (int8 is parsed as
 * one), but only a row changed outside breakwater holds a negative one; SQLite's columns take
 * any value, so a text set by hand (`'abc'`) stays text and a fraction a real. Read as
 * `Number()`, these became NaN or a fraction that failed the next read as a bad `fromPosition`.
 */
export function readStoredPosition(value: unknown): number | undefined {
  const position =
    typeof value === 'number'
      ? value
      : typeof value === 'string' && /^\d+$/.test(value)
        ? +value
        : -1
  return Number.isSafeInteger(position) && position >= 0 ? position : undefined
}

/**
 * {@link readStoredPosition} for a reader that cannot go on without it: anything else is
 * StoredDataError naming the row (`where` is called only then). `what` the column holds, for
 * the message: a projection's table `generation` is read alike.
 */
export function storedPosition(
  value: unknown,
  where: () => StoredPlace,
  what = 'a position',
): number {
  const position = readStoredPosition(value)
  if (position === undefined) {
    throw new StoredDataError(
      where(),
      `is not ${what} (a whole number from 0): ${describeValue(value)}`,
    )
  }
  return position
}

/** Where a projection's `column` is stored (its row in `breakwater_projections`). */
export const projectionPlace = (name: string, column: string) => (): StoredPlace => ({
  table: 'breakwater_projections',
  row: `projection ${JSON.stringify(name)}`,
  column,
})
