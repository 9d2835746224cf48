import { describeValue } from '../core/errors.js'
import { readStoredWholeNumber, StoredDataError, type StoredPlace } from '../stores/errors.js'

/**
 * A position read back from a checkpoint or projection row, or undefined when it is not a
 * whole number from 0 (see {@link readStoredWholeNumber}).
 */
export const readStoredPosition = readStoredWholeNumber

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
