import { checkInteger } from '../core/validate.js'

/** A source of uniformly distributed numbers in `[0, 1)`, like `Math.random`. */
export type RandomSource = () => number

/**
 * A small, fast, seedable random source (mulberry32, 32 bits of state). Use it to make
 * jittered backoff reproducible in tests and simulations; it is not for cryptography.
 *
 * @param seed Any safe integer; only its low 32 bits are used.
 * @example
 * ```ts
 * import { retry, seededRandom } from 'breakwater'
 * const policy = retry({ random: seededRandom(42) }) // the same delays on every run
 * ```
 */
export function seededRandom(seed: number): RandomSource {
  let state = checkInteger('seededRandom.seed', seed, Number.MIN_SAFE_INTEGER) >>> 0
  return () => {
    state = (state + 0x6d2b79f5) | 0
    let t = Math.imul(state ^ (state >>> 15), 1 | state)
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
    return ((t ^ (t >>> 14)) >>> 0) / 4_294_967_296
  }
}
