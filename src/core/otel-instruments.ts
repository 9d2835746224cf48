import { type Meter, type MeterProvider, metrics } from '@opentelemetry/api'

/**
 * Returns a getter for OpenTelemetry instruments that `create` makes from the `breakwater`
 * meter: made on the getter's first call, not at import, and made again whenever the global
 * meter provider has changed since.
 *
 * Why not once for good: the metrics API has no proxy provider (its tracing API has one), so an
 * instrument made before an SDK is registered is the no-op one for ever. An application that
 * starts its SDK after a first retry, timeout or request (a lazy or asynchronous start-up) would
 * have exported nothing from breakwater; so would one that replaces its provider
 * (`metrics.disable()`, then `setGlobalMeterProvider`). Checking the provider costs a read of
 * the API's global per recorded value: about 7 ns on the two-core benchmark machine, measured on
 * a retried call that succeeds at once (100 to 107 ns, alternating A/B runs), against the SDK's
 * own work for the value when one is registered.
 */
export function otelInstruments<T>(create: (meter: Meter) => T): () => T {
  let madeFor: MeterProvider | undefined
  let instruments: T | undefined
  return () => {
    const provider = metrics.getMeterProvider()
    if (instruments === undefined || provider !== madeFor) {
      instruments = create(provider.getMeter('breakwater'))
      madeFor = provider
    }
    return instruments
  }
}
