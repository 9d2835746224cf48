// How big the heavy tests run: `npm run test:chaos` sets BREAKWATER_SCALE=full for the issue's
// figures (500 keyed requests, many crashes); the everyday run keeps the same shape, smaller, so
// the whole suite stays fast on a two-core machine.

/** Whether this run asked for the full-scale figures (`BREAKWATER_SCALE=full`). */
export const fullScale: boolean = process.env.BREAKWATER_SCALE === 'full'

/** `full` in a full-scale run (`BREAKWATER_SCALE=full`), `small` otherwise. */
export function scaled<T>(full: T, small: T): T {
  return fullScale ? full : small
}
