// Records what code adds to OpenTelemetry counters, through a meter provider registered as the
// global one (a no-op meter for every other instrument).

import {
  type Attributes,
  type Counter,
  createNoopMeter,
  type Meter,
  metrics,
} from '@opentelemetry/api'

/** One `add` on a counter. */
export interface CounterAdd {
  readonly name: string
  readonly value: number
  readonly attributes: Attributes | undefined
}

/**
 * Registers a global meter provider whose counters record each `add`, and returns the list they
 * push to (clear it with `length = 0`). Call it at the top of a test file, before the code under
 * test creates its counters: breakwater creates them on first use.
 */
export function recordOtelCounters(): CounterAdd[] {
  const counted: CounterAdd[] = []
  const noopMeter = createNoopMeter()
  const recordingMeter: Meter = {
    ...noopMeter,
    createCounter(name: string): Counter {
      return {
        add(value: number, attributes?: Attributes) {
          counted.push({ name, value, attributes })
        },
      }
    },
    createHistogram: noopMeter.createHistogram.bind(noopMeter),
    createGauge: noopMeter.createGauge.bind(noopMeter),
    createUpDownCounter: noopMeter.createUpDownCounter.bind(noopMeter),
    createObservableGauge: noopMeter.createObservableGauge.bind(noopMeter),
    createObservableCounter: noopMeter.createObservableCounter.bind(noopMeter),
    createObservableUpDownCounter: noopMeter.createObservableUpDownCounter.bind(noopMeter),
    addBatchObservableCallback: noopMeter.addBatchObservableCallback.bind(noopMeter),
    removeBatchObservableCallback: noopMeter.removeBatchObservableCallback.bind(noopMeter),
  }
  metrics.setGlobalMeterProvider({ getMeter: () => recordingMeter })
  return counted
}
