// Records what code adds to OpenTelemetry instruments, through a recording meter registered as
// the global meter provider.
import { metrics } from '@opentelemetry/api'
import { type RecordedValue, type RecordingMeter, recordingMeter } from './recording-meter.js'

/**
 * Registers a global {@link recordingMeter} in place of any provider registered before (by an
 * earlier test file of the same worker, too) and returns the list its instruments push to (clear
 * it with `length = 0`). Call it at the top of a test file: breakwater makes its instruments
 * anew when the global provider changes.
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
  // The API refuses a second registration (returns false) until the first is removed.
  metrics.disable()
  if (!metrics.setGlobalMeterProvider({ getMeter: () => recording.meter }))
    throw new Error('the recording meter provider was not registered')
  return recording
}
