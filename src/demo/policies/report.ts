import { type BreakerScenarioResult, transitionPath } from './breaker-scenario.js'
import type { BulkheadScenarioResult, Downstream } from './bulkhead-scenario.js'
import type { JitterScenarioResult } from './jitter-scenario.js'
import type { TimeoutScenarioResult } from './timeout-scenario.js'
import { formatMs, type VariantResult } from './types.js'

/** The result of any one policy scenario. */
export type PolicyScenarioResult =
  | JitterScenarioResult
  | BulkheadScenarioResult
  | TimeoutScenarioResult
  | BreakerScenarioResult

/** A table column: its header, and whether its cells line up on the right (numbers). */
export interface Column {
  readonly header: string
  readonly right?: boolean
}

/**
 * Renders rows as a table with aligned columns, two spaces apart, the header first.
 *
 * @example
 * ```ts
 * renderTable([{ header: 'name' }, { header: 'n', right: true }], [['a', '1'], ['bb', '22']])
 * // ['name   n', 'a      1', 'bb    22']
 * ```
 */
export function renderTable(
  columns: readonly Column[],
  rows: readonly (readonly string[])[],
): string[] {
  const widths = columns.map((column, i) =>
    Math.max(column.header.length, ...rows.map((row) => (row[i] ?? '').length)),
  )
  const line = (cells: readonly string[]): string =>
    columns
      .map((column, i) => {
        const cell = cells[i] ?? ''
        const width = widths[i]!
        return column.right === true ? cell.padStart(width) : cell.padEnd(width)
      })
      .join('  ')
      .trimEnd()
  return [line(columns.map((c) => c.header)), ...rows.map(line)]
}

/** Breaks `text` into lines of at most `width` characters, the first after `first`, the rest after `rest`. */
export function wrap(text: string, width: number, first: string, rest: string): string[] {
  const lines: string[] = []
  let current = first
  let empty = true
  for (const word of glueUnits(text.split(/\s+/).filter((w) => w !== ''))) {
    if (!empty && current.length + 1 + word.length > width) {
      lines.push(current)
      current = rest + word
    } else {
      current = empty ? current + word : `${current} ${word}`
    }
    empty = false
  }
  lines.push(current)
  return lines
}

// A unit stays on the line of its number: "100 ms", never "100" and "ms" apart.
function glueUnits(words: readonly string[]): string[] {
  const glued: string[] = []
  for (const word of words) {
    const previous = glued.at(-1)
    if (previous !== undefined && /^<?\d/.test(previous) && /^(ms|s)\b/.test(word))
      glued[glued.length - 1] = `${previous} ${word}`
    else glued.push(word)
  }
  return glued
}

const width = 100
const indent = '   '

/** A latency cell: `<1 ms` for calls faster than the clock's resolution. */
function latency(ms: number): string {
  return ms < 1 ? '<1 ms' : `${ms} ms`
}

const commonColumns: readonly Column[] = [
  { header: 'calls', right: true },
  { header: 'ok', right: true },
  { header: 'fast fail', right: true },
  { header: 'retries', right: true },
  { header: 'load', right: true },
  { header: 'p50', right: true },
  { header: 'p99', right: true },
]

function commonCells(row: VariantResult): string[] {
  return [
    String(row.calls),
    String(row.successes),
    String(row.fastFailures),
    String(row.retries),
    String(row.load),
    latency(row.p50Ms),
    latency(row.p99Ms),
  ]
}

function percentOk(row: VariantResult): string {
  return row.calls === 0 ? '-' : `${Math.round((row.successes / row.calls) * 100)}%`
}

function table(result: PolicyScenarioResult): string[] {
  switch (result.scenario) {
    case 'jitter':
      return renderTable(
        [
          { header: 'retry backoff' },
          ...commonColumns,
          { header: `peak/${formatMs(result.windowMs).replace(' ', '')}`, right: true },
          { header: 'shed', right: true },
        ],
        result.variants.map((v) => [v.label, ...commonCells(v), String(v.peak), String(v.shed)]),
      )
    case 'bulkhead': {
      const names: readonly Downstream[] = ['B', 'C', 'D']
      return renderTable(
        [{ header: 'slots' }, { header: 'to' }, ...commonColumns, { header: 'ok %', right: true }],
        result.variants.flatMap((variant) =>
          names.map((name, i) => {
            const row = variant.byDownstream[name]
            return [i === 0 ? variant.label : '', name, ...commonCells(row), percentOk(row)]
          }),
        ),
      )
    }
    case 'timeout':
      return renderTable(
        [{ header: 'timeout' }, ...commonColumns, { header: 'hung', right: true }],
        result.variants.map((v, i) => [v.label, ...commonCells(v), String(result.hangs[i])]),
      )
    case 'breaker':
      return renderTable(
        [
          { header: 'policy' },
          ...commonColumns,
          { header: 'load down', right: true },
          { header: 'transitions', right: true },
        ],
        result.variants.map((v) => [
          v.label,
          ...commonCells(v),
          String(v.loadWhileDown),
          String(v.transitions.length),
        ]),
      )
  }
}

/**
 * Renders one scenario: numbered title, set-up, the table (one row per variant, or per
 * variant and downstream), extra detail, and the computed conclusion.
 */
export function renderScenario(result: PolicyScenarioResult, number: number): string[] {
  const lines = [`${number}. ${result.title} (times x${result.timeScale})`]
  for (const setup of result.setup) lines.push(...wrap(setup, width, indent, `${indent}  `))
  lines.push(...table(result).map((line) => indent + line))
  if (result.scenario === 'breaker') {
    const path = transitionPath(result.variants[1].transitions)
    lines.push(...wrap(`Breaker: ${path}`, width, indent, `${indent}  `))
  }
  const mark = result.conclusion.holds ? '=> ' : '!! '
  lines.push(...wrap(result.conclusion.text, width, `${indent}${mark}`, `${indent}   `))
  return lines
}

/** The lines printed before the scenarios. */
export function renderHeader(): string[] {
  return [
    "breakwater demo policies: the seed's claims, measured on local HTTP services that fail on purpose",
    'Durations are scaled down so the run takes seconds; each title says by how much (x0.1: the ' +
      "seed's 10 s is 1 s here). Counts are not scaled.",
    'load = requests the service received (load down: while it was down); fast fail = refused by ' +
      'a policy without calling or waiting; p50/p99 = time a call took, failures included.',
  ].flatMap((line) => wrap(line, width, '', ''))
}

/**
 * The closing line: how long the run took, how busy the event loop was (every timing above
 * depends on it), and how many claims the numbers showed.
 */
export function renderFooter(
  results: readonly PolicyScenarioResult[],
  elapsedMs: number,
  eventLoopDelayP99Ms: number,
): string[] {
  const shown = results.filter((r) => r.conclusion.holds).length
  const missed = shown === results.length ? '' : '; see the lines marked !!'
  const text =
    `Done in ${(elapsedMs / 1_000).toFixed(1)} s (event-loop delay p99 ` +
    `${latency(eventLoopDelayP99Ms)}): ${shown} of ${results.length} claims shown by the ` +
    `numbers above${missed}.`
  return wrap(text, width, '', '')
}
