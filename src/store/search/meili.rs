//! The Meilisearch backend, through `meilisearch-sdk`.
//!
//! One document per message: `{"id": "{chat_id}-{number}", "application_id",
//! "chat_id", "number", "body"}`. `body` is the only searchable attribute;
//! `chat_id` and `application_id` are filterable, and every filter expression
//! is built from those integers (which the service owns), never from client text.

use std::time::Duration;

use meilisearch_sdk::client::Client;
use meilisearch_sdk::documents::DocumentDeletionQuery;
use meilisearch_sdk::indexes::Index;
use meilisearch_sdk::tasks::Task;
use serde::Deserialize;

use super::{IndexOp, MessageDoc, SearchError};

/// How long to wait for Meilisearch to process one task.
const TASK_TIMEOUT: Duration = Duration::from_secs(30);

/// A handle on the index.
#[derive(Clone)]
pub struct MeiliSearch {
    client: Client,
    index: Index,
}

fn unavailable(e: impl std::fmt::Display) -> SearchError {
    SearchError::Unavailable(e.to_string())
}

/// How applying an [`IndexOp`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Meilisearch could not be reached: retry the op later.
    #[error("Meilisearch unreachable: {0}")]
    Unreachable(String),
    /// Meilisearch rejected the task: retrying will not help.
    #[error("Meilisearch rejected the task: {0}")]
    Rejected(String),
}

impl MeiliSearch {
    /// A client of the server at `url` for index `index`. Errors: an invalid URL or key.
    pub fn new(url: &str, api_key: Option<&str>, index: &str) -> Result<Self, SearchError> {
        let client = Client::new(url, api_key).map_err(unavailable)?;
        let index = client.index(index);
        Ok(Self { client, index })
    }

    /// Whether the server answers its `/health` route as available.
    pub async fn healthy(&self) -> bool {
        self.client.is_healthy().await
    }

    /// Creates the index if needed and applies its settings. Idempotent.
    /// Errors: Meilisearch unreachable or rejecting a settings task.
    pub async fn ensure_index(&self) -> Result<(), ApplyError> {
        // Creating an existing index makes a failed task; that is fine.
        let created = self
            .client
            .create_index(&self.index.uid, Some("id"))
            .await
            .map_err(unreachable)?;
        let _ = created
            .wait_for_completion(&self.client, None, Some(TASK_TIMEOUT))
            .await;
        let task = self
            .index
            .set_searchable_attributes(["body"])
            .await
            .map_err(unreachable)?;
        self.finish(task).await?;
        let task = self
            .index
            .set_filterable_attributes(["chat_id", "application_id"])
            .await
            .map_err(unreachable)?;
        self.finish(task).await
    }

    /// Replaces `docs` and deletes the documents `gone`, waiting for both.
    pub async fn replace_and_delete(
        &self,
        docs: &[MessageDoc],
        gone: &[String],
    ) -> Result<(), ApplyError> {
        if !docs.is_empty() {
            self.upsert(docs).await?;
        }
        if !gone.is_empty() {
            let task = self
                .index
                .delete_documents(gone)
                .await
                .map_err(unreachable)?;
            self.finish(task).await?;
        }
        Ok(())
    }

    /// Applies a delete-by-filter op and waits until Meilisearch processed it
    /// ([`IndexOp::Sync`] needs MariaDB: see [`Self::replace_and_delete`]).
    pub async fn apply_delete(&self, op: &IndexOp) -> Result<(), ApplyError> {
        let task = match op {
            IndexOp::Sync { .. } => return Ok(()),
            IndexOp::DeleteChat { chat_id } => {
                let filter = format!("chat_id = {chat_id}");
                let mut q = DocumentDeletionQuery::new(&self.index);
                q.with_filter(&filter);
                self.index.delete_documents_with(&q).await
            }
            IndexOp::DeleteApplication { application_id } => {
                let filter = format!("application_id = {application_id}");
                let mut q = DocumentDeletionQuery::new(&self.index);
                q.with_filter(&filter);
                self.index.delete_documents_with(&q).await
            }
        }
        .map_err(unreachable)?;
        self.finish(task).await
    }

    async fn finish(&self, task: meilisearch_sdk::task_info::TaskInfo) -> Result<(), ApplyError> {
        match task
            .wait_for_completion(&self.client, None, Some(TASK_TIMEOUT))
            .await
            .map_err(unreachable)?
        {
            Task::Failed { content } => Err(unreachable(
                meilisearch_sdk::errors::Error::Meilisearch(content.error),
            )),
            _ => Ok(()),
        }
    }

    /// Numbers of the messages of chat `chat_id` matching `query`, best
    /// first, each with Meilisearch's ranking score (`_rankingScore`: 0.0 to
    /// 1.0, where 1.0 matches every ranking rule perfectly; see Meilisearch's
    /// "Ranking score" reference).
    pub async fn search(
        &self,
        chat_id: u64,
        query: &str,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<(i64, f64)>, SearchError> {
        #[derive(Deserialize)]
        struct Hit {
            number: i64,
        }
        let filter = format!("chat_id = {chat_id}");
        let results = self
            .index
            .search()
            .with_query(query)
            .with_filter(&filter)
            .with_limit(limit)
            .with_offset(offset)
            .with_show_ranking_score(true)
            .execute::<Hit>()
            .await;
        let results = match results {
            Ok(r) => r,
            // Nothing was indexed yet (the indexer creates the index): no hits.
            Err(meilisearch_sdk::errors::Error::Meilisearch(e))
                if e.error_code == meilisearch_sdk::errors::ErrorCode::IndexNotFound =>
            {
                return Ok(Vec::new());
            }
            Err(e) => return Err(unavailable(e)),
        };
        Ok(results
            .hits
            .into_iter()
            .map(|h| (h.result.number, h.ranking_score.unwrap_or(0.0)))
            .collect())
    }

    /// Sends one batch of documents (used by `reindex`) and waits for it.
    pub async fn upsert(&self, docs: &[MessageDoc]) -> Result<(), ApplyError> {
        let task = self.enqueue_upsert(docs).await?;
        self.finish(task).await
    }

    /// Sends one batch of documents and returns as soon as Meilisearch has
    /// queued its task, without waiting for it to be processed: several
    /// such tasks in flight let Meilisearch's auto-batching merge them into
    /// one indexing pass (`reindex` keeps a few in flight, then
    /// [`Self::wait`]s for each). Errors: as [`Self::upsert`].
    pub async fn enqueue_upsert(
        &self,
        docs: &[MessageDoc],
    ) -> Result<meilisearch_sdk::task_info::TaskInfo, ApplyError> {
        self.index
            .add_or_replace(docs, Some("id"))
            .await
            .map_err(unreachable)
    }

    /// Waits for a task [`Self::enqueue_upsert`] queued (at most 30 s).
    /// Errors: unreachable, timed out, or the task failed.
    pub async fn wait(&self, task: meilisearch_sdk::task_info::TaskInfo) -> Result<(), ApplyError> {
        self.finish(task).await
    }
}

/// Only an invalid request is a rejection; an unreachable server, an
/// internal error or a wrong key may pass, so those are retried.
fn unreachable(e: meilisearch_sdk::errors::Error) -> ApplyError {
    use meilisearch_sdk::errors::{Error, ErrorType};
    match e {
        Error::Meilisearch(m) if m.error_type == ErrorType::InvalidRequest => {
            ApplyError::Rejected(m.error_message)
        }
        other => ApplyError::Unreachable(other.to_string()),
    }
}
