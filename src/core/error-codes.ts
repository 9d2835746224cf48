/**
 * Every stable error code breakwater throws, with a one-line meaning.
 *
 * This object is the single source of truth: `docs/errors.md` documents each code and a test
 * fails when the two disagree. Add a code here first, then document it.
 */
export const errorCodes = {
  INVALID_OPTION: 'An option passed to a factory or function has a wrong type or value.',
  CONFIG_INVALID: 'A configuration file failed validation; the message names each bad path.',
  ABORTED: 'The caller aborted the operation through its AbortSignal.',
  TIMEOUT:
    "An attempt or operation ran past its timeout; also the proxy listener's 408 for a request whose head or body did not arrive in time.",
  DEADLINE_EXCEEDED: 'The end-to-end deadline passed, or too little of it is left to start.',
  BROKEN_CIRCUIT: 'The circuit breaker is open (or half-open and busy) and failed the call fast.',
  ISOLATED_CIRCUIT: 'The circuit breaker was isolated by hand and fails every call.',
  BULKHEAD_FULL:
    'The bulkhead has no free slot and no free queue place (or the queue wait ran out).',
  RETRY_BUDGET_EXHAUSTED: "A retry was refused because the downstream's retry budget is spent.",
  HTTP_STATUS: 'A downstream answered with an HTTP status the caller treats as a failure.',
  HTTP_CLIENT_CLOSED:
    'A request (or a service execute()) was made through an HTTP client after its close() was called, or was still waiting in backoff or the bulkhead queue when it closed.',
  IDEMPOTENCY_KEY_MISSING:
    'A request to a route that requires an Idempotency-Key came without one.',
  IDEMPOTENCY_KEY_INVALID:
    'An idempotency key is empty, longer than 255 characters, uses a character outside the allowed set, is a malformed quoted string (rule syntax), or came in an Idempotency-Key header sent more than once (rule repeated).',
  IDEMPOTENCY_MISMATCH:
    'An idempotency key was reused for a different request (method, route or body).',
  IDEMPOTENCY_BODY_TOO_LARGE:
    'A request body to the node:http, Express or Hono idempotency adapter was larger than its maxBodyBytes (1 MiB by default); answered 413 problem+json with Connection: close, before any key was claimed.',
  IDEMPOTENCY_BODY_UNAVAILABLE:
    'An idempotency adapter was given a request whose body an earlier layer had already read without leaving it in req.body, so the body cannot be fingerprinted.',
  IDEMPOTENCY_RESPONSE_UNSUPPORTED:
    "A keyed request's handler answered in a way its idempotency adapter cannot record and replay (rule 'trailers': node:http or Express trailers; rule 'raw-reply': Fastify reply.raw or reply.hijack()); rolled back, the key released, answered 500.",
  IDEMPOTENCY_IN_PROGRESS:
    'Another request or call holds the idempotency key and has not finished.',
  IDEMPOTENCY_RELEASE_FAILED:
    'The idempotency store failed while a key was being released (a failed handler, or a result that is not recorded); unless the release reached the store before the failure, the key stays in progress until its lease ends, and retries meanwhile get IDEMPOTENCY_IN_PROGRESS.',
  DRIVER_MISSING:
    'A driver package (better-sqlite3, pg, nats, amqplib or ioredis) is not installed.',
  STORE_CLOSED:
    'A statement was sent to a database driver (or a call made on the Redis idempotency store) after close() was called.',
  STORE_BUSY:
    'A SQLite write waited longer than busyTimeoutMs for a transaction of another driver of the same process on the same file, or a PostgreSQL statement waited longer than connectionTimeoutMs for a pooled connection (all maxConnections in use); retryable.',
  TRANSACTION_MISUSE:
    'A transaction executor was used after its transaction ended, or a SQLite driver was called from inside its own transaction (or asked to write from inside the transaction of another driver on the same file).',
  MIGRATION_CONFLICT:
    'An applied migration has a different name than the migration with the same capability and version in code.',
  SCHEMA_TOO_NEW:
    'The database records a migration of a capability newer than any this breakwater knows (a newer release migrated it); the capability refuses to migrate or start, changing nothing.',
  STORED_DATA_INVALID:
    "A row read back from breakwater's tables does not hold what breakwater writes there (text that is not JSON, JSON of the wrong shape): a manual edit, another writer's bug or a restored backup. The error names the table, the row and the column; the row is left as it is.",
  BROKER_UNAVAILABLE:
    'A message broker could not be reached or did not confirm a publish; retryable.',
  BROKER_UNROUTABLE:
    'The broker is up but nothing takes messages for the topic yet (no queue bound, no stream); retryable.',
  BROKER_REJECTED: 'The broker or its client refused the message itself (too large, invalid name).',
  BROKER_MISCONFIGURED:
    "The broker refused the adapter's setup rather than a message: a login (user or password), a vhost, a permission, an exchange, queue or stream that exists with other settings, or a TLS connection that failed its certificate check or handshake; not retryable, and not charged to any event.",
  SUBSCRIPTION_CLOSE_TIMEOUT:
    "A broker subscription's close() (or its subscriber's or broker's) gave up after closeTimeoutMs on handlers that had not finished; the connection is closed and their messages are left unacknowledged for redelivery.",
  RELAY_ID_IN_USE:
    'An outbox relay was started (or renewed its heartbeat) with a relayId that another live relay instance holds; it publishes nothing. A crashed relay restarted with its id comes up once the old heartbeat expires (within leaseMs).',
  RELAY_STOPPED:
    'start() was called on an outbox relay after stop() (or after it crashed); a relay runs once, create a new one.',
  PAYLOAD_TOO_LARGE:
    "An outbox event's payload (its JSON text, in UTF-8 bytes) is larger than maxPayloadBytes (1 MiB by default): refused by enqueue before writing, or, for a row already stored, dead-lettered by the relay without publishing it.",
  DELIVERY_LIMIT_REACHED:
    "A consumed message reached withDeliveryLimit's maxDeliveries: handed to onDeadLetter as the last error when this process did not see the handler's last failure, or thrown into the subscription when onDeadLetter failed (the message is then redelivered).",
  POISON_MESSAGE:
    'The inbox refused a consumed message for good: its id is empty or holds a NUL or a lone surrogate, so it cannot be recorded and deduplicated; acknowledged without running the handler, not redelivered.',
  SAGA_LEASE_LOST:
    "A saga worker's write was refused because another worker took the instance over (its lease expired).",
  SAGA_NOT_FOUND: 'No saga instance has the given id.',
  SAGA_STATE_CONFLICT:
    'A saga operation (retry, cancel, deliver a reply) does not apply to the instance in its current status, or a saga was started with an id an instance of another saga holds.',
  SAGA_REPLY_TIMEOUT:
    'A saga step waited for its reply message longer than its timeout; retryable.',
  SAGA_WORKER_STOPPED:
    'start() was called on a saga worker after stop() (or after a start() that failed); a worker runs once, create a new one.',
  SAGA_AT_COMMIT_TIMEOUT:
    "A saga step's atCommit work did not finish within the worker's atCommitTimeoutMs; its transaction was rolled back and the attempt failed; retryable.",
  WRONG_EXPECTED_VERSION:
    'An event store append found the stream at another version than its expectedVersion; nothing was written.',
  UPCAST_FAILED:
    'An event store read (or append) met an event its upcasters cannot bring to the current version: an upcaster threw or returned nothing, or no chain starts at its stored version.',
  PROJECTION_FAILED:
    "A projection's apply threw on an event (a projector's batch, or a rebuild); the error names the projection, position, stream, type and event id, with the application's error as cause.",
  PROJECTION_SETUP_FAILED:
    "A projection's first run could not create one of its tables (under a role without CREATE on the schema, say); the error names the projection and the table, with the database's error as cause.",
  SUBSCRIPTION_HANDLER_FAILED:
    "An event store subscription's handler threw on an event; the error names the subscription, position, stream, type and event id, with the handler's error as cause; the event is delivered again.",
  REBUILD_SUPERSEDED:
    'A projection rebuild was overtaken by a later rebuild of the same projection; it swapped nothing in.',
  REBUILD_CONTENDED:
    "A projection rebuild's swap did not get its tables (or kept failing with deadlocks or serialization failures) within maxSwapRounds rounds; nothing was swapped in; retryable.",
  REBUILD_BLOCKED:
    "A projection rebuild was refused because something depends on one of the projection's tables itself, which its swap drops: views (PostgreSQL) or foreign keys that would not follow the rebuilt table; nothing was swapped in.",
  UPSTREAM_CONNECT_FAILED:
    'The proxy could not connect to any endpoint of an upstream service (refused, unreachable, TLS handshake or verification failed); answered 502.',
  UPSTREAM_RESET:
    'An upstream connection closed or reset before the response was complete; answered 502 (or the client socket destroyed once streaming began).',
  UPSTREAM_RESPONSE_INVALID:
    "An upstream endpoint sent a response that is not valid HTTP/1.1 (obs-fold, a head past the size limit, conflicting or unparsable framing, a transfer coding other than chunked, a 101 to a request that asked for no upgrade); answered 502 with the parser's reason in the detail (or the client socket destroyed once streaming began).",
  UPSTREAM_TIMEOUT:
    "An upstream endpoint did not connect, send its response head, or send the next body chunk within the service's timeouts; answered 504.",
  UPSTREAM_POOL_REFUSED:
    "The proxy's own connection pool for an upstream service refused a request before writing any of it (the pool was being retired, or the request could not be sent as given); not counted by the circuit breaker or outlier ejection; answered 503.",
  UPSTREAM_NO_ENDPOINTS:
    'An upstream service has no endpoints (discovery found none yet); answered 503.',
  REQUEST_INVALID:
    "The proxy refused a request it will not interpret: an HTTP/0.9 request line, an asterisk or authority-form target, a bad character in the query, a transfer coding other than chunked, a HEAD request with a body, or anything Node's strict parser refuses; answered 400 (505 for an HTTP version other than 1.0 and 1.1, 417 for an Expect other than 100-continue).",
  REQUEST_HOST_INVALID:
    'The proxy refused a request whose Host is missing, repeated, malformed (userinfo, bad port) or disagrees with an absolute-form target; answered 400.',
  REQUEST_PATH_INVALID:
    'The proxy refused a request path it cannot normalize safely (dot-dot above the root, encoded slash or backslash, double encoding, control characters); answered 400.',
  REQUEST_UPGRADE_REFUSED:
    'The proxy refused a request carrying an Upgrade header: only WebSocket handshakes (GET, HTTP/1.1, no body) to routes with websocket set are tunnelled; answered 400.',
  REQUEST_HEADERS_TOO_MANY:
    "A request had more header fields than the listener's limits.maxHeaders, or a header section larger than limits.maxHeaderBytes; answered 431.",
  REQUEST_BODY_TOO_LARGE:
    "A request body was larger than the listener's limits.maxBodyBytes; answered 413.",
  REQUEST_BODY_INCOMPLETE: 'The proxy could not read a request body to its end; answered 400.',
  REQUEST_METHOD_NOT_ALLOWED:
    "The proxy refused a CONNECT or TRACE request; answered 405. (TRACK is refused by node's HTTP parser: 400 REQUEST_INVALID.)",
  SERVICE_NOT_FOUND:
    'A proxy request named no upstream service the listener exposes, or its route has no live target; answered 404 (ambassador) or 502 (gateway).',
  ROUTE_NOT_FOUND:
    'No gateway route matches the request path and headers (or the admin API was asked for an unknown route); answered 404.',
  PROXY_DRAINING:
    'The proxy is shutting down and opens no new WebSocket tunnel; answered 503 so the client reconnects elsewhere.',
  DRAIN_TIMEOUT:
    "A proxy request was still under way when the shutdown drain's drainTimeoutMs ran out, and the proxy cut its connection (access log status 503; the client gets no answer).",
  LISTENER_REMOVED:
    'A request reached a proxy listener that a reload removed while the connection was open; answered 503 with Connection: close, so the client reconnects.',
  LISTENER_NOT_IN_FORCE:
    'A request (or WebSocket handshake) reached a proxy listener that a start or reload was adding, and waited for that config, which was then not applied; answered 503 with Connection: close.',
  IDEMPOTENCY_STORE_UNAVAILABLE:
    "The proxy's idempotency store failed (down, unreachable, or it refused a statement), so a request on a route that enforces Idempotency-Key could not be checked or recorded; answered 503; retryable.",
  INTERNAL_ERROR: 'The proxy failed while handling a request (a bug); answered 500.',
  UNAUTHORIZED:
    'An /admin/ request of the proxy admin API came without the right bearer token; answered 401.',
  NOT_FOUND: 'The proxy admin API has no endpoint at the requested path; answered 404.',
  METHOD_NOT_ALLOWED:
    'Gateway routes take the request path but not its method, or a proxy admin API endpoint (or probe) was called with a method it does not take; answered 405 with Allow.',
  BAD_PATH: 'A proxy admin API path segment is not valid percent-encoding; answered 400.',
  INVALID_BODY:
    'A proxy admin API request body is not JSON or not the expected shape, or names an unknown service; answered 400.',
  UNSUPPORTED_MEDIA_TYPE:
    'A proxy admin API request body was sent with a Content-Type other than JSON; answered 415.',
  BODY_TOO_LARGE:
    "A proxy admin API request body is larger than the admin server's limit; answered 413, and the connection closed after the answer.",
  SHADOW_NOT_CONFIGURED:
    'The proxy admin API was asked for the shadow mismatches of a route without a shadow; answered 404.',
  PROXY_LISTEN_FAILED:
    'startProxy could not bind a listener or the admin API (port in use, address not available, permission denied); the error names the setting.',
  PROXY_TLS_INVALID:
    "startProxy could not use a listener's or an upstream service's TLS files (unreadable, not PEM, key not the certificate's); the error names the setting.",
  PROXY_IDEMPOTENCY_STORE_FAILED:
    'startProxy could not open the idempotency store of idempotency.url (unreachable, refused, not a usable path).',
  PROXY_START_TIMEOUT:
    'startProxy did not start within startTimeoutMs (a database that does not answer, a migration lock held elsewhere, a bind address whose name does not resolve); the error names the step it was waiting for, and whatever had started is closed.',
  PROXY_CLOSED:
    'A proxy reload was asked after close() was called (or close() came while it waited its turn); nothing was applied. The admin API answers it 503 while the proxy drains.',
  PARTIALLY_APPLIED:
    'A proxy admin command reached some workers of a multi-process proxy and not others; answered 502, send it again.',
} as const

/** A stable, documented error code. */
export type ErrorCode = keyof typeof errorCodes
