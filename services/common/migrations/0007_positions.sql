-- Where the service is in each partition it consumes: the offset of the next record to handle,
-- written in the transaction of the batch that handled the records before it. On partition
-- assignment the consumer resumes from here, not from Kafka's committed offsets (which follow
-- for lag monitoring): a restored backup resumes where the backup was, a fresh schema from the
-- beginning of each topic, and nothing in between is skipped.
CREATE TABLE positions (
    topic       text   NOT NULL,
    partition   int    NOT NULL,
    next_offset bigint NOT NULL,
    PRIMARY KEY (topic, partition)
);
