// `null` for an observability option was taken as its default wherever it was read with
// `?? default`: createJsonLogger({ level: null }) logged at info, createBufferedOutput(sink,
// { maxBytes: null }) buffered 64 KiB, createMetricsRegistry({ collectTimeoutMs: null }) waited
// the default. Only undefined (or leaving it out) means the default: every option given as null
// is refused at construction with INVALID_OPTION naming it.
import { describe, it } from 'vitest'
import { bufferedOutputOptions } from '../../src/observability/buffered-output.js'
import {
  createBufferedOutput,
  createJsonLogger,
  createMetricsRegistry,
  startMetricsServer,
} from '../../src/observability/index.js'
import { loggerOptions } from '../../src/observability/logger.js'
import {
  histogramOptions,
  metricOptions,
  registryOptions,
} from '../../src/observability/metrics.js'
import { metricsServerOptions } from '../../src/observability/metrics-server.js'
import {
  expectNullOptionsRefused,
  expectUndefinedOptionsAccepted,
  type NullOptionCase,
} from '../support/null-option.js'

const sink = { write: () => true }
const registry = createMetricsRegistry()
let metric = 0

const bags: Record<string, NullOptionCase> = {
  createJsonLogger: {
    build: (o) => createJsonLogger(o as never),
    good: { output: sink },
    keys: loggerOptions,
    prefix: 'logger',
  },
  createMetricsRegistry: {
    build: (o) => createMetricsRegistry(o),
    good: {},
    keys: registryOptions,
    prefix: 'metricsRegistry',
  },
  startMetricsServer: {
    build: async (o) => (await startMetricsServer(o as never)).close(),
    good: { port: 0, registry },
    keys: metricsServerOptions,
    prefix: 'metricsServer',
  },
  createBufferedOutput: {
    build: (o) => createBufferedOutput(sink, o),
    good: { flushOnExit: false },
    keys: bufferedOutputOptions,
    prefix: undefined,
  },
  counter: {
    build: (o) => registry.counter(o as never),
    good: { name: `c${metric++}`, help: 'h' },
    keys: metricOptions,
    prefix: 'counter',
  },
  histogram: {
    build: (o) => registry.histogram(o as never),
    good: { name: `h${metric++}`, help: 'h' },
    keys: histogramOptions,
    prefix: 'histogram',
  },
}

describe('observability options given as null', () => {
  it.each(Object.keys(bags))('%s refuses each option given as null', (name) =>
    expectNullOptionsRefused(bags[name]!),
  )

  it.each(Object.keys(bags))('%s takes each optional option given as undefined', (name) =>
    expectUndefinedOptionsAccepted(bags[name]!),
  )
})
