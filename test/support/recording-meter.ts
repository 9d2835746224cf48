// An OpenTelemetry meter that records what is created on it and what its counters, histograms
// and gauges are given, for tests of breakwater's instruments. Every other instrument is the
// API's no-op one. Register it with `metrics.setGlobalMeterProvider({ getMeter: () => meter })`
// (or recordOtelCounters); breakwater makes its instruments anew when the provider changes.
import {
  type Attributes,
  createNoopMeter,
  type Meter,
  type MetricOptions,
} from '@opentelemetry/api'

/** An instrument created on a {@link RecordingMeter}. */
export interface CreatedInstrument {
  readonly kind: 'counter' | 'histogram' | 'gauge'
  readonly name: string
  readonly options: MetricOptions | undefined
}

/** A value given to an instrument of a {@link RecordingMeter} (`add` or `record`). */
export interface RecordedValue {
  readonly name: string
  readonly value: number
  readonly attributes: Attributes | undefined
}

/** A meter and what was done with it. */
export interface RecordingMeter {
  readonly meter: Meter
  readonly created: CreatedInstrument[]
  readonly recorded: RecordedValue[]
  /** The values given to the instrument named `name`, in order. */
  values(name: string): number[]
}

/** A new {@link RecordingMeter}. */
export function recordingMeter(): RecordingMeter {
  const created: CreatedInstrument[] = []
  const recorded: RecordedValue[] = []
  const noop = createNoopMeter()
  const instrument =
    (kind: CreatedInstrument['kind']) => (name: string, options?: MetricOptions) => {
      created.push({ kind, name, options })
      const take = (value: number, attributes?: Attributes) => {
        recorded.push({ name, value, attributes })
      }
      return { add: take, record: take }
    }
  const meter: Meter = {
    createCounter: instrument('counter'),
    createHistogram: instrument('histogram'),
    createGauge: instrument('gauge'),
    createUpDownCounter: noop.createUpDownCounter.bind(noop),
    createObservableGauge: noop.createObservableGauge.bind(noop),
    createObservableCounter: noop.createObservableCounter.bind(noop),
    createObservableUpDownCounter: noop.createObservableUpDownCounter.bind(noop),
    addBatchObservableCallback: noop.addBatchObservableCallback.bind(noop),
    removeBatchObservableCallback: noop.removeBatchObservableCallback.bind(noop),
  }
  return {
    meter,
    created,
    recorded,
    values: (name) => recorded.filter((r) => r.name === name).map((r) => r.value),
  }
}
