// Audit events from a Node.js service to auditrail, with the OpenTelemetry JS
// logs SDK (@opentelemetry/sdk-logs) and its OTLP exporters.
//
// Copy this file into your service. The events are plain OTLP log records, so
// they can go to auditrail directly or through an OpenTelemetry Collector.
//
//   const auditor = new Auditor('nano-banana');              // once, at start-up
//   const generate = auditor.imageGeneration(generateImage);  // prompt, parameters, output, status, duration
//   auditor.login('alice', { success: false, actor, reason: 'wrong password' });
//   auditor.imageDeleted(path, { actor });
//   await auditor.shutdown();                                  // flush (also done on exit)
//
// Where the events go is read from the standard OpenTelemetry variables:
// OTEL_EXPORTER_OTLP_ENDPOINT (default http://localhost:4318, or
// http://localhost:4317 for gRPC), OTEL_EXPORTER_OTLP_PROTOCOL ("http/protobuf",
// the default, or "grpc") and OTEL_EXPORTER_OTLP_HEADERS
// ("authorization=Bearer%20<token>" when auditrail has writer tokens); the
// OTEL_EXPORTER_OTLP_LOGS_* variants take precedence.
//
// Each event uses the attribute keys auditrail maps to its canonical fields:
// the event name is the log record's eventName; user.id and user.name are the
// actor, client.address where the request came from, audit.outcome success or
// failure, audit.target what was acted on, the body the prompt, and
// log.record.uid a unique id, so a retried export is stored once. The record
// carries the trace context active when it is emitted (the request's span), so
// auditrail can link each event to its trace.

import { randomUUID } from 'node:crypto';
import os from 'node:os';
import { SeverityNumber } from '@opentelemetry/api-logs';
import { BatchLogRecordProcessor, LoggerProvider } from '@opentelemetry/sdk-logs';
import { OTLPLogExporter as GrpcLogExporter } from '@opentelemetry/exporter-logs-otlp-grpc';
import { OTLPLogExporter as ProtoLogExporter } from '@opentelemetry/exporter-logs-otlp-proto';
import { resourceFromAttributes } from '@opentelemetry/resources';

// The keys auditrail reads its canonical fields from.
export const USER_ID = 'user.id';
export const USER_NAME = 'user.name';
export const CLIENT_ADDRESS = 'client.address';
export const OUTCOME = 'audit.outcome';
export const TARGET = 'audit.target';
export const RECORD_UID = 'log.record.uid';
// Further attributes, named as the seeds' audit table columns map them
// (docs/sinks.md, "Legacy tables"), so a MySQL sink can fill that table.
export const DEVICE_NAME = 'device.name';
export const DURATION_MS = 'duration_ms';
export const ERROR_TYPE = 'error.type';
export const ERROR_MESSAGE = 'error.message';

// Fields of an image-generation request recorded as attributes, by field
// name: the model under the GenAI semantic conventions' name.
export const IMAGE_PARAMETERS = {
  model: 'gen_ai.request.model',
  aspectRatio: 'image.aspect_ratio',
};

/**
 * The OTLP log exporter the standard environment variables ask for. The
 * exporters read the endpoint, headers, timeout and TLS files themselves;
 * the SDK leaves the choice of protocol to the app.
 */
export function exporterFromEnv() {
  const protocol = (
    process.env.OTEL_EXPORTER_OTLP_LOGS_PROTOCOL ||
    process.env.OTEL_EXPORTER_OTLP_PROTOCOL ||
    'http/protobuf'
  ).trim();
  switch (protocol) {
    case 'grpc':
      return new GrpcLogExporter();
    case 'http/protobuf':
      return new ProtoLogExporter();
    default:
      throw new Error(
        `OTEL_EXPORTER_OTLP_PROTOCOL=${JSON.stringify(protocol)}: this example installs ` +
          `the 'grpc' and 'http/protobuf' log exporters`,
      );
  }
}

/**
 * An actor's attributes: `actor` is { id, name, clientAddress, deviceName },
 * every field but id optional.
 */
function actorAttributes(actor) {
  const pairs = {
    [USER_ID]: actor?.id,
    [USER_NAME]: actor?.name,
    [CLIENT_ADDRESS]: actor?.clientAddress,
    [DEVICE_NAME]: actor?.deviceName,
  };
  return Object.fromEntries(Object.entries(pairs).filter(([, value]) => value));
}

/**
 * Emits audit events as OTLP log records through its own LoggerProvider, so
 * the service's other logs never mix with them.
 */
export class Auditor {
  constructor(serviceName, { exporter = exporterFromEnv(), flushOnExit = true } = {}) {
    this.provider = new LoggerProvider({
      resource: resourceFromAttributes({ 'service.name': serviceName }),
      processors: [new BatchLogRecordProcessor({ exporter })],
    });
    this.logger = this.provider.getLogger('auditrail-audit');
    if (flushOnExit) {
      // Node sends nothing by itself at exit: flush when the event loop
      // drains, and on the signals that stop a service.
      process.once('beforeExit', () => this.shutdown());
      for (const signal of ['SIGINT', 'SIGTERM']) {
        process.once(signal, () =>
          this.shutdown().finally(() => process.exit(128 + os.constants.signals[signal])),
        );
      }
    }
  }

  /**
   * Emits one audit event; returns its id (log.record.uid). The record takes
   * the active span's trace context.
   */
  event(name, { success, actor, target, body, attributes = {} }) {
    const uid = randomUUID();
    this.logger.emit({
      eventName: name,
      timestamp: Date.now(),
      severityNumber: success ? SeverityNumber.INFO : SeverityNumber.WARN,
      severityText: success ? 'INFO' : 'WARN',
      body,
      attributes: {
        [RECORD_UID]: uid,
        [OUTCOME]: success ? 'success' : 'failure',
        ...actorAttributes(actor),
        ...(target ? { [TARGET]: target } : {}),
        ...attributes,
      },
    });
    return uid;
  }

  /**
   * A user.login event for `userId`, whether or not the login succeeded;
   * `reason` says why one failed.
   */
  login(userId, { success, actor = {}, reason }) {
    return this.event('user.login', {
      success,
      actor: { ...actor, id: userId, name: userId },
      attributes: reason ? { [ERROR_MESSAGE]: reason } : {},
    });
  }

  /** An image.delete event whose target is the deleted file. */
  imageDeleted(path, { actor }) {
    return this.event('image.delete', { success: true, actor, target: path });
  }

  /**
   * Wraps `generate(request, actor) -> Promise<outputPath>`: each call
   * becomes an image.generate event. The body is `request.prompt`; the
   * request's fields named in `parameters` become the attributes they map
   * to; the output path is the target; a thrown error makes the outcome a
   * failure with its message, and is thrown again.
   */
  imageGeneration(generate, { parameters = IMAGE_PARAMETERS } = {}) {
    return async (request, actor) => {
      const attributes = {};
      for (const [field, key] of Object.entries(parameters)) {
        if (request[field] !== undefined) attributes[key] = request[field];
      }
      const started = performance.now();
      const record = ({ output, failed = false, error }) => {
        attributes[DURATION_MS] = Math.round(performance.now() - started);
        if (failed) {
          attributes[ERROR_TYPE] = error?.name ?? typeof error;
          attributes[ERROR_MESSAGE] = error?.message ?? String(error);
        }
        this.event('image.generate', {
          success: !failed,
          actor,
          target: output,
          body: request.prompt,
          attributes,
        });
      };
      let output;
      try {
        output = await generate(request, actor);
      } catch (error) {
        record({ failed: true, error });
        throw error;
      }
      record({ output: String(output) });
      return output;
    };
  }

  /** Sends what is batched. */
  flush() {
    return this.provider.forceFlush();
  }

  /** Flushes and stops; later events are dropped. Safe to call twice. */
  shutdown() {
    this.stopped ??= this.provider.shutdown();
    return this.stopped;
  }
}
