import type { CallSummary } from './measure.js'

/** One variant of a scenario (without or with a policy): what callers saw and what it cost. */
export interface VariantResult extends CallSummary {
  /** A short label for the variant, e.g. `"full jitter"`. */
  readonly label: string
  /** Retries made by the retry policy (attempts after the first). */
  readonly retries: number
  /** Requests the failing or slow service received. */
  readonly load: number
}

/**
 * The one-line verdict under a scenario's table, computed from the measured numbers: `holds`
 * is false when this run's numbers do not show the claim, and the text then says so.
 */
export interface Conclusion {
  readonly holds: boolean
  readonly text: string
}

/** What every scenario result carries besides its own figures. */
export interface ScenarioHeading {
  /** The seed's claim the scenario tests, e.g. "Jitter spreads retry waves". */
  readonly title: string
  /** Lines describing the set-up, with the times actually used. */
  readonly setup: readonly string[]
  /** Every duration of the seed's story is multiplied by this. */
  readonly timeScale: number
  readonly conclusion: Conclusion
}

/** Formats a scaled duration for set-up lines: `"50 ms"`, `"1 s"`. */
export function formatMs(ms: number): string {
  if (ms >= 1_000 && ms % 1_000 === 0) return `${ms / 1_000} s`
  return `${Number.isInteger(ms) ? ms : ms.toFixed(1)} ms`
}

/** Scales a duration of the seed's story, rounding to whole milliseconds (at least 1). */
export function scaled(seedMs: number, timeScale: number): number {
  return Math.max(1, Math.round(seedMs * timeScale))
}
