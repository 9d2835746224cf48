// Every type that breakwater/proxy's exports name can be imported from it (`npm run typecheck`
// checks this file): StartProxyOptions took a Logger and a MetricsRegistry, parseProxyConfig a
// ProxyConfigOverrides, and ProxyConfig held RetryConfig and the like, none of which a user could
// import to write one.
import { describe, expect, expectTypeOf, it } from 'vitest'
import type {
  AdminConfig,
  BreakerConfig,
  BulkheadConfig,
  Counter,
  DiscoveryConfig,
  EndpointState,
  Gauge,
  Histogram,
  IdempotencyStoreConfig,
  LimitsConfig,
  ListenerConfig,
  ListenerTlsConfig,
  LogFields,
  Logger,
  LogLevel,
  MetricsRegistry,
  OutboundAuthConfig,
  OutlierEjectionConfig,
  ProxyConfig,
  ProxyConfigOverrides,
  RetryAffinityConfig,
  RetryConfig,
  RouteConfig,
  RouteIdempotencyConfig,
  RouteMatchConfig,
  RouteTargetConfig,
  SecretSource,
  ServiceConfig,
  ServiceState,
  ShadowConfig,
  StartProxyOptions,
  TimeoutsConfig,
  UpstreamTlsConfig,
  WebSocketConfig,
} from '../../src/proxy/index.js'
import { parseProxyConfig } from '../../src/proxy/index.js'

describe('breakwater/proxy exported types', () => {
  it('types startProxy options a user writes: a logger, a registry, overrides', () => {
    const lines: string[] = []
    const logger: Logger = {
      level: 'info',
      isLevelEnabled: (level: LogLevel) => level !== 'debug',
      debug: () => {},
      info: (msg: string, fields?: LogFields) => lines.push(`${msg} ${JSON.stringify(fields)}`),
      warn: () => {},
      error: () => {},
      child: () => logger,
    }
    expectTypeOf<StartProxyOptions['logger']>().toEqualTypeOf<Logger | undefined>()
    expectTypeOf<StartProxyOptions['metrics']>().toEqualTypeOf<MetricsRegistry | undefined>()
    expectTypeOf<MetricsRegistry['counter']>().returns.toEqualTypeOf<Counter>()
    expectTypeOf<MetricsRegistry['gauge']>().returns.toEqualTypeOf<Gauge>()
    expectTypeOf<MetricsRegistry['histogram']>().returns.toEqualTypeOf<Histogram>()
    const overrides: ProxyConfigOverrides = { workers: 1 }
    expectTypeOf(parseProxyConfig).parameter(2).toEqualTypeOf<ProxyConfigOverrides | undefined>()
    logger.info('ready', { overrides })
    expect(lines).toEqual(['ready {"overrides":{"workers":1}}'])
  })

  it('names every part of a ProxyConfig', () => {
    expectTypeOf<ProxyConfig['services']>().toEqualTypeOf<ReadonlyMap<string, ServiceConfig>>()
    expectTypeOf<ServiceConfig['retry']>().toEqualTypeOf<RetryConfig | undefined>()
    expectTypeOf<ServiceConfig['timeouts']>().toEqualTypeOf<TimeoutsConfig>()
    expectTypeOf<ServiceConfig['breaker']>().toEqualTypeOf<BreakerConfig | undefined>()
    expectTypeOf<ServiceConfig['bulkhead']>().toEqualTypeOf<BulkheadConfig>()
    expectTypeOf<RouteConfig['match']>().toEqualTypeOf<RouteMatchConfig>()
    expectTypeOf<ListenerConfig['limits']>().toEqualTypeOf<LimitsConfig>()
    // The rest compile as imported names (each a type the config or a state names).
    type Named = [
      AdminConfig,
      DiscoveryConfig,
      EndpointState,
      IdempotencyStoreConfig,
      ListenerTlsConfig,
      OutboundAuthConfig,
      OutlierEjectionConfig,
      RetryAffinityConfig,
      RouteIdempotencyConfig,
      RouteTargetConfig,
      SecretSource,
      ServiceState,
      ShadowConfig,
      UpstreamTlsConfig,
      WebSocketConfig,
    ]
    expectTypeOf<Named>().not.toBeNever()
  })
})
