//! What a librdkafka error code means for delivery: wait and retry, stop
//! and fix the config, or dead-letter the record to blame.
//!
//! librdkafka reports broker errors (positive codes, the Kafka protocol's)
//! and its own (negative codes) through the same enum. Most of them are
//! transient: librdkafka retries those internally first, so what reaches the
//! sink has outlived its own retries or cannot be retried at all.

use rdkafka::error::{KafkaError, RDKafkaErrorCode as Code};

use crate::ExportError;

/// The class and metric kind of an error code.
pub fn classify(code: Code, message: String) -> ExportError {
    match code {
        // The record itself cannot be stored: too large for the client's
        // `message.max.bytes` or the topic's `max.message.bytes` (both are
        // code 10), refused by the broker's record validation (a compacted
        // topic wants a key; a timestamp outside the broker's window), or a
        // topic name no broker takes. Splitting the batch finds the record.
        Code::MessageSizeTooLarge | Code::MessageBatchTooLarge => {
            ExportError::permanent("message_too_large", message)
        }
        Code::InvalidRecord | Code::InvalidTimestamp | Code::InvalidTopic => {
            ExportError::permanent("data", message)
        }
        // Credentials, ACLs, a missing topic with auto-creation off, a broker
        // too old or set up against what the sink needs: no record is to
        // blame and retrying changes nothing until someone fixes it.
        Code::TopicAuthorizationFailed
        | Code::ClusterAuthorizationFailed
        | Code::GroupAuthorizationFailed
        | Code::TransactionalIdAuthorizationFailed
        | Code::SaslAuthenticationFailed
        | Code::UnsupportedSASLMechanism
        | Code::IllegalSASLState
        | Code::Authentication
        | Code::SSL => ExportError::misconfigured("auth", message),
        Code::UnknownTopic | Code::UnknownTopicOrPartition | Code::UnknownPartition => {
            ExportError::misconfigured("topic", message)
        }
        Code::InvalidRequiredAcks
        | Code::UnsupportedVersion
        | Code::UnsupportedForMessageFormat
        | Code::UnsupportedFeature
        | Code::UnsupportedCompressionType
        | Code::PolicyViolation
        | Code::InvalidConfig
        | Code::InvalidPartitions
        | Code::InvalidReplicationFactor
        | Code::InvalidReplicaAssignment
        | Code::InvalidArgument
        | Code::SecurityDisabled => ExportError::misconfigured("config", message),
        // The idempotent producer lost its session (a fatal error: fenced,
        // out-of-order sequence, unknown producer id). librdkafka then
        // refuses everything; the sink's next attempt sees its fatal error
        // and starts a new producer (`KafkaSink::producer`).
        Code::Fatal
        | Code::Fenced
        | Code::ProducerFenced
        | Code::OutOfOrderSequenceNumber
        | Code::InvalidProducerEpoch
        | Code::UnknownProducerId
        | Code::InvalidProducerIdMapping => ExportError::retryable("producer", message),
        Code::MessageTimedOut | Code::RequestTimedOut | Code::OperationTimedOut => {
            ExportError::retryable("timeout", message)
        }
        Code::BrokerTransportFailure
        | Code::AllBrokersDown
        | Code::Resolve
        | Code::NetworkException
        | Code::BrokerNotAvailable => ExportError::retryable("connection", message),
        // Leader elections, too few in-sync replicas for acks=all, a full
        // local queue, throttling: the cluster catches up by itself.
        _ => ExportError::retryable("server", message),
    }
}

/// The error code in a `KafkaError`, when it has one.
pub fn code_of(error: &KafkaError) -> Option<Code> {
    error.rdkafka_error_code()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorClass;

    #[test]
    fn size_and_record_errors_blame_the_record() {
        for code in [
            Code::MessageSizeTooLarge,
            Code::InvalidRecord,
            Code::InvalidTimestamp,
        ] {
            assert_eq!(
                classify(code, String::new()).class,
                ErrorClass::Permanent,
                "{code:?}"
            );
        }
        assert_eq!(
            classify(Code::MessageSizeTooLarge, String::new()).kind,
            "message_too_large"
        );
    }

    #[test]
    fn transport_and_leader_errors_are_retried() {
        for code in [
            Code::BrokerTransportFailure,
            Code::AllBrokersDown,
            Code::MessageTimedOut,
            Code::NotLeaderForPartition,
            Code::NotEnoughReplicas,
            Code::QueueFull,
            Code::LeaderNotAvailable,
        ] {
            assert_eq!(
                classify(code, String::new()).class,
                ErrorClass::Retryable,
                "{code:?}"
            );
        }
    }

    #[test]
    fn auth_and_missing_topics_are_config_errors() {
        for code in [
            Code::TopicAuthorizationFailed,
            Code::SaslAuthenticationFailed,
            Code::UnknownTopicOrPartition,
            Code::UnknownTopic,
            Code::InvalidRequiredAcks,
        ] {
            assert_eq!(
                classify(code, String::new()).class,
                ErrorClass::Misconfigured,
                "{code:?}"
            );
        }
    }

    #[test]
    fn a_lost_producer_session_is_retried_with_a_new_producer() {
        assert_eq!(
            classify(Code::Fatal, String::new()).class,
            ErrorClass::Retryable
        );
    }
}
