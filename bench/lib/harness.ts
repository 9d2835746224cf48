import { mkdirSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

/** One measured figure, in the format every benchmark writes. */
export interface ResultRow {
  subject: string
  case: string
  metric: string
  value: number
}

const resultsDir = join(dirname(fileURLToPath(import.meta.url)), '..', 'results')

/** Writes `bench/results/<name>.json` and prints the rows as aligned lines. */
export function writeResults(benchmark: string, rows: ResultRow[]): string {
  mkdirSync(resultsDir, { recursive: true })
  const file = join(resultsDir, `${benchmark}.json`)
  writeFileSync(file, `${JSON.stringify({ benchmark, rows }, null, 2)}\n`)
  for (const row of rows) {
    console.log(
      `${benchmark}  ${row.subject.padEnd(14)} ${row.case.padEnd(28)} ${row.metric.padEnd(16)} ${formatValue(row)}`,
    )
  }
  console.log(`wrote ${file}`)
  return file
}

// A goal row (subject 'goal', metric 'met') holds 1 or 0 in the file; printed as a number it
// read "... met 0.00" for a goal missed.
function formatValue(row: ResultRow): string {
  if (row.subject === 'goal' && row.metric === 'met') return row.value === 1 ? 'yes' : 'NO (missed)'
  const value = row.value
  return value >= 100 ? value.toFixed(0) : value.toPrecision(3)
}

/** A sequential async operation measured by {@link measureInterleaved}. */
export interface AsyncCase {
  subject: string
  case: string
  run: () => Promise<unknown>
}

/** Options of {@link measureInterleaved}. */
export interface MeasureOptions {
  /** Samples per case; the reported figure is their median. @default 15 */
  rounds?: number
  /**
   * Calls per sample, the same for every case. When absent, each case gets as many calls as
   * fit in `targetSampleMs` (calibrated on its warmup), so a slow peer cannot eat the budget.
   * @default calibrated
   */
  iterations?: number
  /** Calls per case before measuring (JIT warmup and calibration). @default 20_000 */
  warmup?: number
  /** Wall time one sample of one case aims at, when `iterations` is absent. @default 20 */
  targetSampleMs?: number
}

/**
 * Measures ns per sequential call for each case, interleaving the cases round by round so
 * that machine noise (this machine is shared) hits them all alike; reports the median round.
 */
export async function measureInterleaved(
  cases: AsyncCase[],
  options: MeasureOptions = {},
): Promise<ResultRow[]> {
  const rounds = options.rounds ?? 15
  const warmup = options.warmup ?? 20_000
  const targetNs = (options.targetSampleMs ?? 20) * 1e6
  const iterations: number[] = []
  for (const c of cases) {
    // Calibrate on the second half of the warmup, once the JIT has had the first half.
    const half = warmup >> 1
    for (let i = 0; i < half; i++) await c.run()
    const start = process.hrtime.bigint()
    for (let i = half; i < warmup; i++) await c.run()
    const nsPerOp = Number(process.hrtime.bigint() - start) / Math.max(1, warmup - half)
    iterations.push(options.iterations ?? Math.max(200, Math.round(targetNs / nsPerOp)))
  }
  // No forced GC between samples: a full collection with no instance alive frees the
  // transition maps that optimized code embeds, deoptimizing it ('weak objects'), so every
  // sample would then measure re-optimization. Interleaving spreads the GC cost fairly.
  const samples = cases.map(() => [] as number[])
  for (let r = 0; r < rounds; r++) {
    for (let ci = 0; ci < cases.length; ci++) {
      const c = cases[ci]!
      const n = iterations[ci]!
      const start = process.hrtime.bigint()
      for (let i = 0; i < n; i++) await c.run()
      samples[ci]!.push(Number(process.hrtime.bigint() - start) / n)
    }
  }
  return cases.map((c, ci) => ({
    subject: c.subject,
    case: c.case,
    metric: 'ns_per_op',
    value: median(samples[ci]!),
  }))
}

/**
 * The order in which to run `count` subjects in round `round`: rows of a Williams design, so
 * that over `count` rounds (2 * `count` when `count` is odd) each subject runs right after
 * every other one equally often. Rotating one fixed order instead, as this bench once did,
 * keeps every subject behind the same neighbour in every round, so a neighbour that leaves
 * work behind (WAL to flush, dirty pages, a checkpoint) would slow the same subject each time.
 */
export function balancedOrder(count: number, round: number): number[] {
  if (!Number.isInteger(count) || count < 1) throw new RangeError(`count must be >= 1: ${count}`)
  // The first row: 0, 1, n-1, 2, n-2, ...; each later row adds its index to every entry.
  const first: number[] = [0]
  for (let low = 1, high = count - 1; first.length < count; ) {
    first.push(low++)
    if (first.length < count) first.push(high--)
  }
  const shift = round % count
  const row = first.map((subject) => (subject + shift) % count)
  // For an odd count the rows alone give some neighbours twice and others never; their
  // reversals, in the second half of the cycle, give the missing ones.
  const reversed = count % 2 === 1 && Math.floor(round / count) % 2 === 1
  return reversed ? row.reverse() : row
}

/** The median of a non-empty list. */
export function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b)
  const mid = sorted.length >> 1
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2
}

/** The p-th percentile (0..100) of a non-empty list. */
export function percentile(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b)
  const index = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))
  return sorted[index]!
}

/** Forces a full collection; benchmarks run with --expose-gc. */
export function collectGarbage(): void {
  const gc = (globalThis as { gc?: () => void }).gc
  if (gc === undefined) throw new Error('run benchmarks with node --expose-gc (npm run bench does)')
  gc()
  gc()
}
