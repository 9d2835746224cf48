// A misspelt option of an observability factory is refused at construction, naming it: it used
// to be dropped without a word (`redactkeys` left the named fields unredacted in the logs).
import { describe, expect, it } from 'vitest'
import {
  createBufferedOutput,
  createJsonLogger,
  createMetricsRegistry,
  startMetricsServer,
} from '../../src/observability/index.js'
import { expectUnknownOptionRefused } from '../support/unknown-option.js'

const sink = { write: () => true }
const registry = createMetricsRegistry()
let metric = 0

/** Each factory with correct options, and with them plus `extra`; the prefix of its errors. */
const factories: Array<[string, (extra: object) => unknown, string]> = [
  ['createJsonLogger', (x) => createJsonLogger({ output: sink, level: 'warn', ...x }), 'logger'],
  [
    'createMetricsRegistry',
    (x) => createMetricsRegistry({ collectTimeoutMs: 10, ...x }),
    'metricsRegistry',
  ],
  [
    'startMetricsServer',
    async (x) => (await startMetricsServer({ port: 0, registry, ...x })).close(),
    'metricsServer',
  ],
  [
    'createBufferedOutput',
    (x) => createBufferedOutput(sink, { maxBytes: 100, flushOnExit: false, ...x }),
    'options',
  ],
  ['counter', (x) => registry.counter({ name: `c${metric++}`, help: 'h', ...x }), 'counter'],
  ['gauge', (x) => registry.gauge({ name: `g${metric++}`, help: 'h', ...x }), 'gauge'],
  [
    'histogram',
    (x) => registry.histogram({ name: `h${metric++}`, help: 'h', buckets: [1], ...x }),
    'histogram',
  ],
]

describe('observability factories refuse unknown options', () => {
  it.each(factories)('%s', (_name, make, prefix) =>
    expectUnknownOptionRefused(make, prefix, { labelnames: ['a'] }),
  )

  it('takes any field names in the logger fields (data, not options)', () => {
    expect(() => createJsonLogger({ output: sink, fields: { labelnames: 'x' } })).not.toThrow()
  })
})
