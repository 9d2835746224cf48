// breakwater/http: the resilient outbound HTTP client on undici 7. One connection pool and one
// policy stack per downstream service; deadline header out, Idempotency-Key on retries.

export type { HttpClient } from './client.js'
export { createHttpClient } from './client.js'
export { HttpClientClosedError, HttpStatusError } from './errors.js'
export type { HttpClientEvent, HttpEvents } from './events.js'
export type {
  HttpBulkheadOptions,
  HttpCircuitBreakerOptions,
  HttpClientOptions,
  HttpRequestBaseOptions,
  HttpRequestBody,
  HttpRequestOptions,
  HttpRetryBudgetOptions,
  HttpRetryOptions,
  HttpServiceOptions,
} from './options.js'
export type { QueryParams, QueryValue } from './request-target.js'
export type { HttpResponse, HttpResponseHeaders } from './response.js'
export type {
  HttpExecuteOptions,
  HttpPoolStats,
  HttpService,
  HttpServiceState,
} from './service.js'
