// breakwater's OpenTelemetry instruments follow the global meter provider: made on first use,
// and made again when the provider changes. They were made once for good, so an SDK registered
// after a first retry (a lazy or asynchronous start-up) received nothing from breakwater.
import { metrics } from '@opentelemetry/api'
import { afterEach, describe, expect, it } from 'vitest'
import { otelInstruments } from '../../src/core/otel-instruments.js'
import { retry } from '../../src/policies/retry.js'
import { recordingMeter } from '../support/recording-meter.js'

function register(meter: ReturnType<typeof recordingMeter>['meter']): void {
  metrics.disable()
  expect(metrics.setGlobalMeterProvider({ getMeter: () => meter })).toBe(true)
}

afterEach(() => {
  metrics.disable()
})

describe('otelInstruments', () => {
  it('makes the instruments once per provider, on the breakwater meter', () => {
    const first = recordingMeter()
    register(first.meter)
    const counter = otelInstruments((meter) => meter.createCounter('breakwater.test.count'))
    counter().add(1)
    counter().add(2)
    expect(first.created.map((c) => c.name)).toEqual(['breakwater.test.count'])
    expect(first.values('breakwater.test.count')).toEqual([1, 2])

    const second = recordingMeter()
    register(second.meter)
    counter().add(3)
    expect(second.values('breakwater.test.count')).toEqual([3])
    expect(first.values('breakwater.test.count')).toEqual([1, 2])
  })

  it('asks the provider for the meter named breakwater', () => {
    const recording = recordingMeter()
    const asked: string[] = []
    metrics.disable()
    metrics.setGlobalMeterProvider({
      getMeter: (name) => {
        asked.push(name)
        return recording.meter
      },
    })
    otelInstruments((meter) => meter.createCounter('breakwater.test.named'))().add(1)
    expect(asked).toEqual(['breakwater'])
  })
})

describe('a policy used before the SDK is registered', () => {
  it('records to the provider registered after its first call', async () => {
    const policy = retry({ maxAttempts: 2 })
    metrics.disable()
    await policy.execute(async () => 'before')

    const recording = recordingMeter()
    register(recording.meter)
    await policy.execute(async () => 'after')
    expect(recording.values('breakwater.retry.attempts')).toEqual([1])
  })
})
