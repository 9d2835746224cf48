// The breakwater proxy config the proxy benchmark runs, shared by the single-process case
// (startProxy in bench/lib/proxy-roles.ts) and the multi-process case (the CLI with --workers),
// so both measure exactly the same policies: timeouts, retry with budget, breaker, bulkhead
// and outlier ejection, with access logs off as for nginx.

/** The YAML of an ambassador on `port` (0: any) in front of `upstreamUrl`. */
export function benchProxyYaml(upstreamUrl: string, port: number, workers?: number): string {
  return [
    'services:',
    '  bench:',
    `    endpoints: [${upstreamUrl}]`,
    '    loadBalancer: least-request',
    '    timeouts: { connectMs: 1000, readMs: 5000, overallMs: 10000 }',
    '    retry: { attempts: 3, baseDelayMs: 25, maxDelayMs: 1000, budget: { ratio: 0.2, minPerSecond: 10 } }',
    '    circuitBreaker: { failureThreshold: 5, cooldownMs: 10000, halfOpenProbes: 1 }',
    '    bulkhead: { maxConcurrent: 1024, maxQueue: 1024, connectionsPerEndpoint: 64 }',
    '    outlierEjection: { consecutiveFailures: 5, baseEjectionMs: 30000, maxEjectedPercent: 50 }',
    'listeners:',
    `  - { name: outbound, role: ambassador, host: 127.0.0.1, port: ${port} }`,
    'accessLog: false',
    ...(workers === undefined ? [] : [`workers: ${workers}`]),
    '',
  ].join('\n')
}

/**
 * The YAML of the scaling case: a gateway on `port` whose one route answers from `primary`
 * and shadows every GET to `shadow` (both at `upstreamUrl`), comparing the two JSON answers.
 * Parsing and diffing make the proxy the busiest process, which is where more workers help.
 */
export function benchShadowGatewayYaml(
  upstreamUrl: string,
  port: number,
  adminPort: number,
  workers: number,
): string {
  return [
    'services:',
    `  primary: { endpoints: [${upstreamUrl}] }`,
    `  shadow: { endpoints: [${upstreamUrl}] }`,
    'listeners:',
    `  - name: inbound`,
    '    role: gateway',
    '    host: 127.0.0.1',
    `    port: ${port}`,
    '    routes:',
    '      - name: orders',
    '        match: { prefix: / }',
    '        targets: [{ service: primary, weight: 1 }]',
    '        shadow: { service: shadow, learnNoise: false }',
    `admin: { port: ${adminPort}, token: { env: BENCH_ADMIN_TOKEN } }`,
    'accessLog: false',
    `workers: ${workers}`,
    '',
  ].join('\n')
}
