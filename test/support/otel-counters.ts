// Records what code adds to OpenTelemetry instruments, through a recording meter registered as
// the global meter provider.
import { metrics } from '@opentelemetry/api'
import { type RecordedValue, type RecordingMeter, recordingMeter } from './recording-meter.js'

/**
 * Registers a global {@link recordingMeter} and returns the list its instruments push to (clear
 * it with `length = 0`). Call it at the top of a test file, before the code under test creates
 * its instruments: breakwater creates them on first use.
 */
export function recordOtelCounters(): RecordedValue[] {
  return recordOtelInstruments().recorded
}

/**
 * {@link recordOtelCounters}, returning the whole {@link RecordingMeter}: also the instruments
 * created, with their options (a histogram's unit and buckets).
 */
export function recordOtelInstruments(): RecordingMeter {
  const recording = recordingMeter()
  metrics.setGlobalMeterProvider({ getMeter: () => recording.meter })
  return recording
}
