// Records what code adds to OpenTelemetry instruments, through a recording meter registered as
// the global meter provider.
import { metrics } from '@opentelemetry/api'
import { type RecordedValue, recordingMeter } from './recording-meter.js'

/**
 * Registers a global {@link recordingMeter} and returns the list its instruments push to (clear
 * it with `length = 0`). Call it at the top of a test file, before the code under test creates
 * its instruments: breakwater creates them on first use.
 */
export function recordOtelCounters(): RecordedValue[] {
  const { meter, recorded } = recordingMeter()
  metrics.setGlobalMeterProvider({ getMeter: () => meter })
  return recorded
}
